"""Reports and dashboards: ``ranksweep report | sync | dashboard`` on real tiny sweeps.

Two studies are swept once per module with the real ``ranksweep -m`` command (tiny
model, CPU, SQLite, offline W&B) into one storage: ``rs_seeds`` (one ladder, two seeds
per rank) and ``rs_targets`` (two ladders: attention, all_linear). Two more studies search
the learning rate per rank with the synthetic app (tests/helpers/synthetic_app.py, seconds):
``syn`` (r=8..256) and ``syn_edge`` (a range that excludes the larger ranks' best learning
rate). The HTML report is opened in headless Chromium (file:// only, network off),
optuna-dashboard is queried on a loopback port, the W&B runs are read back with
``wandb leet inspect``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import NO_CHECKS
from helpers.report_dom import (
    cell,
    check_offline,
    check_screenshot,
    check_verdict,
    chromium,
    console_errors,
    evidence_rows,
    ladder_block,
    open_dom,
    study_section,
    text_of,
)
from helpers.run import BIN as RANKSWEEP_BIN
from helpers.run import Result, inprocess
from helpers.run import env as _env

BIN = Path(sys.executable).parent
TINY = [
    "model=tiny_llama", "trainer=tiny", "trainer.max_steps=4", "trainer.eval_every=2",
    "data.max_examples=64", "data.eval_size=8", "data.metric_examples=0",
    "hydra.sweeper.max_rank=16", "hydra.sweeper.min_gain=0.0",
]
STUDIES = {
    "rs_seeds": ["hydra.sweeper.seeds_per_rank=2", "hydra.sweeper.noise_seeds=0"],
    "rs_targets": ["lora.targets=attention,all_linear", *NO_CHECKS],  # rs_seeds shows the budget check
}
TESTS = Path(__file__).resolve().parent
SYN = ["model=tiny_llama", "trainer=tiny", "trainer.max_steps=30", "trainer.eval_every=5", "logger=none",
       "hydra.sweeper.margin=0.01", "hydra.sweeper.margin_type=absolute"]
SEARCHED = {
    "syn": ["hydra.sweeper.max_rank=256", '+hydra.sweeper.search={trainer.lr: "tag(log, interval(3e-5, 3e-3))"}',
            "hydra.sweeper.search_budget=10"],
    "syn_edge": ["hydra.sweeper.max_rank=32", '+hydra.sweeper.search={trainer.lr: "tag(log, interval(4e-4, 4e-3))"}',
                 "hydra.sweeper.search_budget=4"],
}


def rs(cwd: Path, *args: str, cache: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RANKSWEEP_BIN, *args], cwd=cwd, env=_env(cache or cwd / "cache"), capture_output=True,
                          text=True, timeout=timeout)


def here(cwd: Path, *args: str) -> Result:
    """A subcommand (report, sync, dashboard) run by this process, through its entry point, with the environment
    :func:`rs` gives a child; the real script's one line is test_bad_input.py's subprocess cases."""
    return inprocess(cwd, *args, cache=cwd / "cache")


def storage_url(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'outputs' / 'ranksweep.db'}"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A folder where both tiny sweeps ran (outputs/ranksweep.db, outputs/sweeps/<study>/)."""
    cwd = tmp_path_factory.mktemp("swept")
    cache = tmp_path_factory.mktemp("cache")
    for name, extra in STUDIES.items():
        proc = rs(cwd, "-m", *TINY, *extra, f"hydra.sweeper.study_name={name}", cache=cache, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A folder where both searched synthetic sweeps ran (one storage, outputs/sweeps/<study>/)."""
    cwd = tmp_path_factory.mktemp("searched")
    env = dict(_env(cwd / "cache"), PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    for name, extra in SEARCHED.items():
        proc = subprocess.run([sys.executable, "-m", "helpers.synthetic_app", "-m", *SYN, *extra,
                               f"hydra.sweeper.study_name={name}"], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def summary_ladders(cwd: Path, name: str) -> list[dict]:
    return json.loads((cwd / "outputs" / "sweeps" / name / "sweep_summary.json").read_text())["ladders"]


def load(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(cwd))


def trial_run_dir(t) -> Path:
    """A trial's offline W&B run: its `wandb_run` attr, else (pruned, failed) the one in its output dir."""
    if t.user_attrs.get("wandb_run"):
        return Path(t.user_attrs["wandb_run"])
    (run,) = Path(t.user_attrs["output_dir"], "wandb").glob("offline-run-*")
    return run


def report(cwd: Path, *studies: str, extra: tuple[str, ...] = ()) -> Path:
    proc = here(cwd, "report", *studies, "--storage", storage_url(cwd), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr
    path = Path(proc.stdout.strip())
    return path if path.is_absolute() else cwd / path


# ----------------------------------------------------------------------------- the report

slow = pytest.mark.slow  # everything that needs the swept studies; the bad-input tests are fast


@slow
def test_report_one_study(swept, tmp_path):
    path = report(swept, "rs_seeds")
    assert path == swept / "outputs" / "reports" / "rs_seeds.html"
    text = path.read_text()
    check_offline(text)
    study = load(swept, "rs_seeds")
    trials = study.get_trials()
    # base + 2 ranks x 2 seeds, and the budget check's longer runs
    assert len([t for t in trials if t.user_attrs["role"] != "budget"]) == 5
    assert {t.user_attrs["role"] for t in trials} == {"base", "rung", "budget"}

    png = tmp_path / "one.png"
    chromium(tmp_path, path, f"--screenshot={png}", "--window-size=1280,2000")
    check_screenshot(png)
    proc = chromium(tmp_path, path, "--dump-dom")
    dom = proc.stdout
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    assert re.search(r'<div id="js-errors"[^>]*></div>', dom), "a script error was caught"
    assert 'id="report-status">ready<' in dom, "the page's script did not run to the end"
    # plots: per ladder, cost vs quality, eval curves; each has drawn paths
    svgs = re.findall(r"<svg\b.*?</svg>", dom, re.S)
    assert len(svgs) >= 3 and all(s.count("<path") > 10 for s in svgs)
    # the trials table: one row per trial, linking output dirs and W&B runs as file:// URLs
    rows = re.findall(r'<tr class="[^"]*" data-trial="(\d+)">(.*?)</tr>', dom, re.S)
    assert sorted(int(n) for n, _ in rows) == [t.number for t in trials]
    for t in trials:
        row = dict(rows)[str(t.number)]
        assert Path(t.user_attrs["output_dir"]).as_uri() in row
        assert trial_run_dir(t).as_uri() in row
        if t.user_attrs["role"] == "rung" and t.state.name == "COMPLETE":
            size = Path(t.user_attrs["output_dir"], "adapter", "adapter_model.safetensors").stat().st_size
            assert f"{size / 1e6:.3f}" in row  # adapter MB
    # the recommendation, knee and stop reason, as the sweep summary has them
    doc = json.loads((swept / "outputs" / "sweeps" / "rs_seeds" / "sweep_summary.json").read_text())
    (lad,) = doc["ladders"]
    assert lad["stop_reason"] in dom and f"r={lad['recommendation']['rank']}" in dom
    # the evidence: the budget verdict, the eval set, a row per rank with the adapters' own evidence
    block = ladder_block(study_section(dom, "rs_seeds"), "default")
    check_verdict(block, lad)
    rows = evidence_rows(block)
    assert sorted(rows) == [r["rank"] for r in lad["rungs"]]
    from ranksweep.report import load_study_data

    (loaded,) = load_study_data("rs_seeds", storage_url(swept)).ladders
    for rung in loaded.complete:
        row = rows[rung.rank]
        assert "(2 seeds)" in cell(row, "value")[1]
        assert int(cell(row, "trainable")[0]["data-sort"]) == rung.trainable_params
        assert float(cell(row, "effective-rank")[0]["data-sort"]) == rung.effective_rank
    second = loaded.complete[1]
    assert second.similarity is not None and 0 < second.similarity <= 1 + 1e-9
    assert float(cell(rows[second.rank], "similarity")[0]["data-sort"]) == pytest.approx(second.similarity)
    assert float(cell(rows[second.rank], "extra-energy")[0]["data-sort"]) == pytest.approx(second.extra_energy)


@slow
def test_report_ladders_equal_sweep_summary(swept):
    from ranksweep.report import load_study_data
    from ranksweep.sweep.summary import ladder_summary

    for name in STUDIES:
        data = load_study_data(name, storage_url(swept))
        doc = json.loads((swept / "outputs" / "sweeps" / name / "sweep_summary.json").read_text())
        got = json.loads(json.dumps(ladder_summary(data.ladders)["ladders"]))
        for lad, want in zip(got, doc["ladders"]):
            for rung, rung_want in zip(lad["rungs"], want["rungs"]):
                for key in ("similarity", "extra_energy"):  # the report reads the adapters; the sweep may not
                    if rung_want[key] is None:
                        rung_want[key] = rung[key]
        assert got == doc["ladders"]
        # and it read them: every rank after the first compares its adapter with the previous rank's
        assert all(r.similarity is not None and r.extra_energy is not None
                   for lad in data.ladders for r in lad.complete[1:])
        for row in data.trials:
            assert row.output_dir is not None and row.output_dir.is_dir()
            assert row.wandb_dir is not None and row.wandb_dir.is_dir()
            if row.state == optuna.trial.TrialState.COMPLETE:
                assert row.adapter_mb is not None and row.adapter_mb > 0


@slow
def test_report_compares_two_studies(swept, tmp_path):
    path = report(swept, "rs_seeds", "rs_targets")
    assert path == swept / "outputs" / "reports" / "rs_seeds_vs_rs_targets.html"
    check_offline(path.read_text())
    png = tmp_path / "two.png"
    chromium(tmp_path, path, f"--screenshot={png}", "--window-size=1280,2000")
    check_screenshot(png)
    proc = chromium(tmp_path, path, "--dump-dom")
    dom = proc.stdout
    assert not console_errors(proc.stderr)
    assert re.search(r'<div id="js-errors"[^>]*></div>', dom) and 'id="report-status">ready<' in dom
    # one section per study, and an overview table with one row per ladder (1 + 2)
    assert 'id="study-rs_seeds"' in dom and 'id="study-rs_targets"' in dom
    overview = re.search(r'<table class="sortable overview">(.*?)</table>', dom, re.S).group(1)
    assert overview.count("<tr>") == 1 + 3
    for key in ("lora.targets=attention", "lora.targets=all_linear", "default"):
        assert key in overview
    # overlay charts: every ladder of both studies on the same axes
    overlays = re.search(r'<section class="overview".*?</section>', dom, re.S).group(0)
    charts = re.findall(r"<svg\b.*?</svg>", overlays, re.S)
    assert len(charts) >= 3
    assert all(n in charts[0] for n in ("rs_seeds / default", "rs_targets / lora.targets=attention"))
    rows = re.findall(r'data-trial="\d+"', dom)
    assert len(rows) == len(load(swept, "rs_seeds").trials) + len(load(swept, "rs_targets").trials)


@slow
def test_report_shows_failures_and_unfinished_sweeps(swept, tmp_path):
    """A failed trial added after the sweep: the ladders are rebuilt and the reason is shown."""
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    db = tmp_path / "copy.db"
    shutil.copy(swept / "outputs" / "ranksweep.db", db)
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="rs_seeds", storage=url)
    reason = "TrialFailed: loss is NaN at step 3"
    study.add_trial(create_trial(
        state=TrialState.FAIL, params={"rank": 32, "seed": 0},
        distributions={"rank": IntDistribution(0, 1 << 20), "seed": IntDistribution(0, 1 << 16)},
        user_attrs={"ladder": "default", "rank": 32, "seed": 0, "role": "rung", "failure_kind": "nan",
                    "fail_reason": reason, "output_dir": str(tmp_path / "gone")}))
    out = tmp_path / "failed.html"
    proc = here(swept, "report", "rs_seeds", "--storage", url, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == out
    text = out.read_text()
    failures = re.search(r'<table class="failures">(.*?)</table>', text, re.S).group(1)
    assert reason in failures and ">nan<" in failures
    from ranksweep.report import load_study_data

    (lad,) = load_study_data("rs_seeds", url).ladders
    assert lad.curve[-1].rank == 32 and lad.curve[-1].state == optuna.trial.TrialState.FAIL
    assert lad.curve[-1].fail_reason == reason
    assert "(missing)" in text  # its output dir is gone: shown, not linked


@slow
def test_report_of_a_searched_study(searched, tmp_path):
    """A sweep with a learning-rate search per rank: the verdict, the figures, the per-rank table and the
    how-to-read note, with the numbers the study and its summary hold."""
    from collections import Counter

    path = report(searched, "syn")
    check_offline(path.read_text())
    png = tmp_path / "syn.png"
    chromium(tmp_path, path, f"--screenshot={png}", "--window-size=1280,2000")
    check_screenshot(png)
    section = study_section(open_dom(tmp_path, path), "syn")
    (lad,) = summary_ladders(searched, "syn")
    block = ladder_block(section, "default")
    check_verdict(block, lad)
    labels = re.findall(r'<figure class="fig" role="img" aria-label="([^"]*)"', block)
    assert labels == ["eval_loss against rank for syn default",
                      "gain per doubling with 95% intervals against the margin for syn default",
                      "search trials against the learning rate per rank for syn default"]
    search_svg = block.split('aria-label="search trials')[1]
    assert "learning rate (log scale)" in search_svg and all(f"r={r['rank']}" in search_svg for r in lad["rungs"])
    rows = evidence_rows(block)
    assert sorted(rows) == [r["rank"] for r in lad["rungs"]]
    study = load(searched, "syn")
    best = study.best_trial  # the best rank's best search trial
    assert float(cell(rows[best.user_attrs["rank"]], "lr")[0]["data-lr"]) == best.params["trainer.lr"]
    trials = study.get_trials()
    for rung in lad["rungs"]:
        row = rows[rung["rank"]]
        attrs, text = cell(row, "lr")
        assert float(attrs["data-lr"]) == rung["best_lr"] and f"of {len(set(rung['lrs']))} tried" in text
        assert f"trainer.lr={rung['best_params']['trainer.lr']:.3g}" in text_of(row)
        mine = [t for t in trials if t.user_attrs.get("rank") == rung["rank"]]
        pruned = Counter(t.user_attrs["pruned_by"] for t in mine if t.state.name == "PRUNED")
        attrs, text = cell(row, "trials")
        assert int(attrs["data-sort"]) == len(mine)  # its search and any budget-check runs
        assert len([t for t in mine if t.user_attrs["role"] == "search"]) == 10
        assert ("pruned: " + ", ".join(f"{k} {v}" for k, v in sorted(pruned.items()))) in text if pruned else \
            "pruned" not in text
        assert int(cell(row, "steps")[0]["data-sort"]) == sum(max(t.intermediate_values) for t in mine)
        assert int(cell(row, "trainable")[0]["data-sort"]) == rung["trainable_params"]
        sep = cell(row, "separation")[0]["data-sort"]
        assert (int(sep) if sep else None) == rung["separation_step"]
        falling = re.search(r'<td class="falling">(\w+)</td>', row).group(1)
        assert falling == {True: "yes", False: "no", None: "-"}[rung["still_falling"]]
        if rung["gain"] is not None:  # the doubling's interval, green when its lower bound clears the margin
            attrs, _ = cell(row, "gain")
            assert float(attrs["data-lo"]) == pytest.approx(rung["gain"]["lo"])
            assert float(attrs["data-hi"]) == pytest.approx(rung["gain"]["hi"])
            verdict = {d["to"]: d["verdict"] for d in lad["doublings"]}[rung["rank"]]  # the summary's
            assert re.search(r'class="num gain (above|leaning|below)"', row).group(1) == verdict
            assert (verdict == "above") == (rung["gain"]["lo"] > lad["margin"])
            assert (verdict == "leaning") == (rung["gain"]["lo"] <= lad["margin"] < rung["gain"]["est"])
        if rung["rank"] != lad["recommendation"]["best_rank"]:
            attrs, _ = cell(row, "vs-best")
            assert float(attrs["data-hi"]) == pytest.approx(rung["vs_best"]["hi"])
    assert "★" in rows[lad["recommendation"]["rank"]].split("</td>")[0]
    howto = re.search(r'<div class="howto">.*?</div>', section, re.S).group(0)
    for key, value in [("stop rule", "margin"), ("margin", "0.01 eval_loss (absolute)"), ("confidence", "95%"),
                       ("patience", "2 doubling(s)"), ("search space", "trainer.lr: tag(log, interval(3e-5, 3e-3))"),
                       ("search budget", "10 trials per rank")]:
        assert f"<dt>{key}</dt><dd>{value}</dd>" in howto, key
    assert "paired bootstrap" in howto and "best trial" in howto
    # pruned trials say which rule stopped them
    failures = text_of(re.search(r'<table class="failures">.*?</table>', section, re.S).group(0))
    assert "successive halving" in failures


@slow
def test_report_flags_a_best_learning_rate_at_the_search_edge(searched, tmp_path):
    """A search range that excludes r=32's best learning rate: its row flags the low edge, a warning says so;
    both searched studies in one report (the comparison overlays draw them too)."""
    path = report(searched, "syn", "syn_edge")
    assert path.name == "syn_vs_syn_edge.html"
    dom = open_dom(tmp_path, path)
    section = study_section(dom, "syn_edge")
    (lad,) = summary_ladders(searched, "syn_edge")
    edges = {r["rank"]: r["lr_at_edge"] for r in lad["rungs"]}
    assert edges[32] == "low", edges
    block = ladder_block(section, "default")
    rows = evidence_rows(block)
    for rank, edge in edges.items():
        assert re.findall(r'<span class="edge" data-edge="(\w+)"', rows[rank]) == ([edge] if edge else [])
    assert float(cell(rows[32], "lr")[0]["data-lr"]) < 4e-4 * 1.2  # at the bottom of interval(4e-4, 4e-3)
    warning = re.search(r'<div class="warning lr-edge"[^>]*>(.*?)</div>', block, re.S)
    assert warning and "r=32 (low edge" in text_of(warning.group(1))
    for name in SEARCHED:  # each study's section has its own figures, table and note
        assert "search trials against the learning rate" in study_section(dom, name)


def _hostile_study(tmp_path: Path) -> str:
    """A study made by hand (no training): a base, two seeds at r=8, a pruned r=16 seed and a failed r=16
    seed, with markup in its ladder key and failure reason. Returns its storage URL."""
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    url = f"sqlite:///{tmp_path / 'outputs' / 'ranksweep.db'}"
    (tmp_path / "outputs").mkdir()
    study = optuna.create_study(study_name="hostile", storage=url)
    key = "lora.targets=<i>q&v</i>"
    study.set_user_attr("ranksweep_space", {"ladders": [key], "start_rank": 8, "factor": 2, "seeds_per_rank": 2,
                                            "objective": "eval_loss", "fixed": ["model=<tiny>"]})
    dists = {"rank": IntDistribution(0, 1 << 20), "seed": IntDistribution(0, 1 << 16)}
    for rank, seed, state, value, extra in [
            (0, 0, TrialState.COMPLETE, 4.8, {"role": "base"}),
            (8, 0, TrialState.COMPLETE, 4.1, {}), (8, 1, TrialState.COMPLETE, 4.2, {}),
            (16, 0, TrialState.PRUNED, None, {}),
            (16, 1, TrialState.FAIL, None, {"failure_kind": "nan", "fail_reason": '<script>alert("x")</script>'})]:
        attrs = {"ladder": key, "rank": rank, "seed": seed, "role": "rung", "duration_s": 1.5 + rank,
                 "peak_mem_gb": 0.5, "trainable_params": 1000 * rank, "alpha": 2.0 * rank,
                 "output_dir": str(tmp_path / "outputs" / f"t{rank}-{seed}"), **extra}
        study.add_trial(create_trial(state=state, value=value, params={"rank": rank, "seed": seed},
                                     distributions=dists, user_attrs=attrs,
                                     intermediate_values={} if rank == 0 else {2: 4.5, 4: value or 4.4}))
    (tmp_path / "outputs" / "t8-0").mkdir()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.1},
                                 distributions={"x": FloatDistribution(0, 1)}))  # not ranksweep's: ignored
    return url


def test_report_layers_escape_everything_and_stay_offline(tmp_path):
    """The whole report without a sweep: loading, figures and the autoescaped template."""
    from ranksweep.report import load_study_data, render_report

    url = _hostile_study(tmp_path)
    data = load_study_data("hostile", url)
    (lad,) = data.ladders
    assert [r.rank for r in lad.curve][:1] == [8] and lad.base == pytest.approx(4.8)
    assert [r.number for r in data.trials] == list(range(6))
    text = render_report([data], generated="now")
    assert render_report([data], generated="now") == text, "the same study renders to the same page"
    check_offline(text)
    # our two scripts only; the markup in the study's strings is text
    assert text.count("<script>") == 2 and '<script>alert' not in text and "<i>q&v</i>" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text
    assert "lora.targets=&lt;i&gt;q&amp;v&lt;/i&gt;" in text and "model=&lt;tiny&gt;" in text
    failures = re.search(r'<table class="failures">(.*?)</table>', text, re.S).group(1)
    assert failures.count("<tr class=") == 2 and ">nan<" in failures and ">PRUNED<" in failures
    rows = re.findall(r'<tr class="[^"]*" data-trial="(\d+)">(.*?)</tr>', text, re.S)
    assert [int(n) for n, _ in rows] == list(range(6))
    assert (tmp_path / "outputs" / "t8-0").as_uri() in dict(rows)["1"] and "(missing)" in dict(rows)["2"]
    # figures: per ladder, cost, eval curves; the stylesheet and scripts inlined from the package
    assert len(re.findall(r"<svg\b", text)) == 3 and 'id="report-status">loading<' in text
    from importlib import resources

    for name in ("report.css", "errors.js", "report.js"):
        asset = (resources.files("ranksweep.report") / "templates" / name).read_text().strip()
        assert asset and asset in text, name


def test_each_doubling_shows_its_verdict_leaning_included(tmp_path):
    """A study made by hand, with per-example eval losses: r=8 runs three seeds (the noise), r=8 -> 16 only leans
    towards a gain (its estimate above the margin, its interval not), r=16 -> 32 is a confident gain and
    r=32 -> 64 is within the margin. The summary, the ladder table and the gain figure give each its verdict."""
    import numpy as np
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    from ranksweep.report import load_study_data, render_report
    from ranksweep.report.figures import VERDICTS

    url = f"sqlite:///{tmp_path / 'ranksweep.db'}"
    study = optuna.create_study(study_name="lean", storage=url)
    study.set_user_attr("ranksweep_space", {"ladders": ["default"], "start_rank": 8, "factor": 2, "noise_seeds": 2,
                                            "objective": "eval_loss", "fixed": []})
    tokens = np.random.default_rng(0).integers(5, 30, 60).astype(float)
    hard = np.random.default_rng(1).gamma(4.0, 0.25, 60)
    for rank, seed, value in [(0, 0, 3.0), (8, 0, 2.80), (8, 1, 2.82), (8, 2, 2.78), (16, 0, 2.74), (32, 0, 2.50),
                              (64, 0, 2.4999)]:
        loss = (hard * value * tokens).tolist()  # two trials differ by exactly their values: the seeds are the noise
        attrs = {"ladder": "default", "rank": rank, "seed": seed, "slot": 0, "role": "base" if rank == 0 else "rung",
                 "eval_examples": {"loss": loss, "tokens": tokens.tolist(), "fingerprint": "f", "n": 60}}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=sum(loss) / tokens.sum(), user_attrs=attrs,
                                     params={"rank": rank, "seed": seed},
                                     distributions={"rank": IntDistribution(0, 1 << 20),
                                                    "seed": IntDistribution(0, 1 << 16)}))
    data = load_study_data("lean", url)
    (lad,) = data.ladders
    doublings = lad.to_dict()["doublings"]
    assert [(d["from"], d["to"], d["verdict"]) for d in doublings] == [
        (8, 16, "leaning"), (16, 32, "above"), (32, 64, "below")], doublings
    text = render_report([data], generated="now")
    for rank, verdict in [(16, "leaning"), (32, "above"), (64, "below")]:
        row = re.search(rf'<tr class="rung[^"]*" data-rank="{rank}">(.*?)</tr>', text, re.S).group(1)
        assert f'class="num gain {verdict}"' in row, (rank, row)
    for _, _, label in VERDICTS.values():  # the gain figure's legend: the three kinds, each drawn
        assert label in text


def test_storage_checks_are_one_line(tmp_path):
    from ranksweep.errors import RanksweepError
    from ranksweep.report import check_storage

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(RanksweepError, match="is empty, not an Optuna database"):
        check_storage(f"sqlite:///{empty}")
    with pytest.raises(RanksweepError, match="no such journal file"):
        check_storage(f"journal:///{tmp_path / 'none.log'}")
    assert not (tmp_path / "none.log").exists()


# ----------------------------------------------------------------------------- W&B


def leet(*args: str) -> str:
    proc = subprocess.run([str(BIN / "wandb"), "leet", "inspect", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def run_group(run_dir: str) -> str | None:
    """The run's group: in the run record of the transaction log (``--summary`` does not show it)."""
    for line in leet("--json", run_dir).splitlines():
        rec = json.loads(line)
        if rec.get("type") == "run":
            return rec["run"].get("run_group")
    return None


@slow
def test_wandb_runs_read_back(swept):
    study = load(swept, "rs_targets")
    for t in study.get_trials():
        if t.user_attrs["role"] != "rung" or t.state.name != "COMPLETE":
            continue
        run_dir = t.user_attrs["wandb_run"]
        info = json.loads(leet("--summary", "--json", run_dir))
        rank, targets = t.params["rank"], t.params["lora.targets"]
        alpha = t.user_attrs["alpha"]  # the alpha rule's value, as the trial recorded it (default: fixed 16)
        assert info["state"] == "finished" and info["project"] == "ranksweep"
        assert info["name"] == f"r{rank}-a{alpha:g}-{targets}-nf4"
        assert run_group(run_dir) == "rs_targets"
        c = info["config"]
        flat = (c["r"], c["alpha"], c["targets"], c["bits"], c["family"])
        assert flat == (rank, alpha, targets, 4, "llama")
        assert c["seed"] == t.params["seed"] and c["trial"]["study_name"] == "rs_targets"
        s = info["summary"]
        assert s["eval_loss"] == pytest.approx(t.value, rel=1e-6)
        assert s["trainable_params"] == t.user_attrs["trainable_params"]
        assert s["peak_mem_gb"] == pytest.approx(t.user_attrs["peak_mem_gb"])
    # the sweep's summary run: same group, the recommendation per ladder
    (summary_run,) = (swept / "outputs" / "sweeps" / "rs_targets" / "wandb").glob("offline-run-*")
    info = json.loads(leet("--summary", "--json", str(summary_run)))
    assert info["name"] == "rs_targets-summary" and run_group(str(summary_run)) == "rs_targets"
    doc = json.loads((swept / "outputs" / "sweeps" / "rs_targets" / "sweep_summary.json").read_text())
    for lad in doc["ladders"]:
        assert info["summary"][f"{lad['key']}/recommended_rank"] == lad["recommendation"]["rank"]


@slow
def test_sync_collects_run_dirs(swept):
    from ranksweep.report import wandb_run_dirs

    study = load(swept, "rs_targets")
    dirs = wandb_run_dirs("rs_targets", storage_url(swept))
    per_trial = [trial_run_dir(t) for t in sorted(study.get_trials(), key=lambda t: t.number)]
    summary_runs = sorted((swept / "outputs" / "sweeps" / "rs_targets" / "wandb").glob("offline-run-*"))
    assert len(summary_runs) == 1
    assert dirs == per_trial + summary_runs
    assert all(d.is_dir() and d.name.startswith("offline-run-") for d in dirs)
    # --dry-run prints them, uploads nothing
    proc = here(swept, "sync", "rs_targets", "--storage", storage_url(swept), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [Path(p) for p in proc.stdout.split()] == dirs


# ----------------------------------------------------------------------------- optuna-dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        assert resp.status == 200
        return json.loads(resp.read())


@slow
def test_dashboard_serves_the_studies(swept):
    port = _free_port()
    cmd = [RANKSWEEP_BIN, "dashboard", "--storage", storage_url(swept), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=swept, env=_env(swept / "cache"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        by_name = {s["study_name"]: s for s in studies}
        assert set(by_name) == set(STUDIES)
        for name in STUDIES:
            study = load(swept, name)
            detail = _get(f"{base}/api/studies/{by_name[name]['study_id']}?after=0")
            assert detail["name"] == name
            got = {t["number"]: t for t in detail["trials"]}
            assert sorted(got) == [t.number for t in study.get_trials()]
            for t in study.get_trials():
                d = got[t.number]
                assert d["state"].lower() == t.state.name.lower()
                params = {p["name"]: p["param_external_value"] for p in d["params"]}
                assert params["rank"] == str(t.params["rank"])
                attrs = {a["key"]: a["value"] for a in d["user_attrs"]}
                assert attrs["ladder"] == t.user_attrs["ladder"]
                if t.value is not None:
                    assert d["values"][0] == pytest.approx(t.value)
            assert detail["has_intermediate_values"] is True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- bad input (fast)


def _one_line_error(proc: Result, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def empty_storage(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'outputs' / 'ranksweep.db'}"
    (tmp_path / "outputs").mkdir()
    optuna.create_study(study_name="empty", storage=url)
    return url


@pytest.mark.parametrize("command", ["report", "sync"])
def test_missing_study_is_one_line(tmp_path, empty_storage, command):
    _one_line_error(here(tmp_path, command, "nope", "--storage", empty_storage), "'nope' not found", "empty")


def test_empty_study_is_one_line(tmp_path, empty_storage):
    _one_line_error(here(tmp_path, "report", "empty", "--storage", empty_storage), "'empty'", "no trials")
    assert not (tmp_path / "outputs" / "reports").exists()


@pytest.mark.parametrize("command", [["report", "x"], ["sync", "x"], ["dashboard"]])
def test_corrupt_storage_is_one_line(tmp_path, command):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "ranksweep.db").write_text("not a database\n" * 10)
    _one_line_error(here(tmp_path, *command), "--storage", "not an SQLite database")


@pytest.mark.parametrize("command", [["report", "x"], ["sync", "x"], ["dashboard"]])
def test_sqlite_file_that_is_not_optuna_is_one_line_and_untouched(tmp_path, command):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("create table studies (x int)")
    con.close()
    before = db.read_bytes()
    proc = here(tmp_path, *command, "--storage", f"sqlite:///{db}")
    _one_line_error(proc, "--storage", "not an Optuna storage")
    assert db.read_bytes() == before, "Optuna's tables were added to somebody else's database"


def test_missing_storage_is_one_line_and_creates_nothing(tmp_path):
    _one_line_error(here(tmp_path, "report", "x"), "no such database")
    _one_line_error(here(tmp_path, "sync", "x"), "no such database")
    assert not (tmp_path / "outputs").exists()


def test_bad_arguments_are_one_line(tmp_path):
    _one_line_error(here(tmp_path, "report"), "ranksweep report", "STUDY")
    _one_line_error(here(tmp_path, "dashboard", "--port", "x"), "--port")


# ----------------------------------------------------------------------------- the nested prescreen

PREFIXES = {1: 2.31, 2: 2.14, 4: 2.04, 8: 2.03}  # the one nested run at r=8, read at each prefix
SEPARATE = {2: 2.12, 4: 2.02, 8: 1.99}  # the ranks trained on their own to confirm its candidate, r=4


def _prescreen_study(verdict: str = "confirmed", fallback: str = ""):
    """A study's data built by hand (the reader's part is tested with it): a ladder of
    hydra.sweeper.prescreen=nested whose prescreen (trial 1, 200 steps) put the candidate at r=4, confirmed by
    r=2, 4 and 8 trained on their own (100 steps each)."""
    from optuna.trial import TrialState

    from ranksweep.report import StudyData, TrialRow
    from ranksweep.sweep.results import PRESCREEN_SLOT, Job, JobStatus, Ladder, Prescreen, Rung, Trial
    from ranksweep.sweep.rules import Comparison, Doubling, Recommendation, Step
    from ranksweep.sweep.stats import Interval

    def trial(number: int, rank: int, value: float, role: str) -> Trial:
        return Trial(number=number, ladder="default", rank=rank, seed=0, state=TrialState.COMPLETE, value=value,
                     params={"rank": rank, "seed": 0},
                     attrs={"role": role, "steps": 0 if role == "base" else 200 if role == "prescreen" else 100})

    def doubling(a: int, b: int, values: dict[int, float]) -> Doubling:
        gain = values[a] - values[b]
        return Doubling(a, b, Interval(gain, gain - 0.04, gain + 0.04), 0.05, above=gain - 0.04 > 0.05)

    base, pre = trial(0, 0, 3.0, "base"), trial(1, 8, PREFIXES[8], "prescreen")
    rungs = []
    for n, (rank, value) in enumerate(SEPARATE.items()):
        t = trial(2 + n, rank, value, "rung")
        rungs.append(Rung(rank=rank, values=[value], trainable_params=1000 * rank,
                          jobs=[Job(seed=0, slot=0, status=JobStatus.DONE, trial=t)]))
    ranks = sorted(PREFIXES)
    lad = Ladder(key="default", base=3.0, base_trial=base, rungs=rungs, stop_reason="the confirmations settled it",
                 done=True, margin=0.05,
                 recommendation=Recommendation(rank=4, best_rank=8, tolerance_abs=0.05, why="r=4 is within the margin"),
                 comparison=Comparison(doublings=[doubling(2, 4, SEPARATE), doubling(4, 8, SEPARATE)], margin=0.05),
                 prescreen=Prescreen(
                     rank=8, job=Job(seed=0, slot=PRESCREEN_SLOT, status=JobStatus.DONE, trial=pre),
                     steps=[Step(r, PREFIXES[r]) for r in ranks], candidate=4, why="r=4: the prefixes' knee",
                     confirm=(2, 4, 8), verdict=verdict, fallback=fallback,
                     doublings=[doubling(a, b, PREFIXES) for a, b in zip(ranks, ranks[1:])],
                     agreement={"ranks": [2, 4, 8], "gap": {str(r): PREFIXES[r] - SEPARATE[r] for r in SEPARATE},
                                "kendall_tau": 1.0, "verdicts_same": 2, "verdicts_compared": 2}))
    rows = [TrialRow(trial=t) for t in lad.trials]
    return StudyData(name="nested", storage="sqlite:///x.db", direction="minimize", objective="eval_loss", space={},
                     trials=sorted(rows, key=lambda r: r.number), ladders=[lad], summary_path=None, summary_note="",
                     sweep_dirs=[], summary_runs=[])


def _prefix_rows(block: str) -> dict[int, tuple[str, str]]:
    """The prescreen table's rows by rank: (the row's classes, its markup)."""
    found = re.findall(r'<tr class="(prefix[^"]*)" data-rank="(\d+)">(.*?)</tr>', block, re.S)
    return {int(r): (cls, row) for cls, r, row in found}


def _check_prescreen_block(block: str) -> None:
    """The prescreen's part of a ladder's block: its table, candidate, verdict, agreement and the ladder's cost."""
    pre = re.search(r'<div class="prescreen" data-rank="8" data-candidate="4" data-verdict="confirmed">(.*?)'
                    r"</table>", block, re.S)
    assert pre, "no prescreen block"
    text = text_of(pre.group(1))
    assert "Candidate r=4: r=4: the prefixes' knee" in text
    assert re.search(r'<div class="reading prescreen-outcome"', pre.group(1))
    assert "Confirmed (ranks trained on their own to confirm it: r=2, r=4, r=8)" in text
    assert re.search(r'class="kendall-tau" data-tau="1.0">1<', pre.group(1))
    assert re.search(r'class="verdicts-same" data-same="2" data-compared="2">2 of 2<', pre.group(1))
    assert re.search(r'class="prescreen-steps" data-steps="200">200<', pre.group(1))
    rows = _prefix_rows(block)
    assert sorted(rows) == sorted(PREFIXES)
    for rank, (cls, row) in rows.items():
        assert ("candidate" in cls.split()) == (rank == 4) and ("confirm" in cls.split()) == (rank in SEPARATE)
        assert float(cell(row, "prefix-value")[0]["data-sort"]) == PREFIXES[rank]
        sep, gap = cell(row, "separate-value"), cell(row, "gap")
        if rank in SEPARATE:
            assert float(sep[0]["data-sort"]) == SEPARATE[rank] and sep[1] == f"{SEPARATE[rank]:.4f}"
            assert float(gap[0]["data-sort"]) == pytest.approx(PREFIXES[rank] - SEPARATE[rank])
        else:
            assert sep == ({"data-sort": ""}, "-") and gap[1] == "-"
    # the doubling to each rank, on the prefixes / on the separately trained ranks (none to the first of each)
    verdicts = {r: re.findall(r'<span class="(?:prefix|separate)-verdict (\w+)">', row) for r, (_, row) in rows.items()}
    assert verdicts == {1: ["none", "none"], 2: ["above", "none"], 4: ["above", "above"], 8: ["below", "below"]}
    # the ladder's cost: 3 ranks x 100 steps and the prescreen's 200 (4 trials, the base not counted)
    cost = re.search(r'<span class="cost" data-steps="(\d+)" data-trials="(\d+)" data-prescreen-steps="(\d+)"'
                     r'[^>]*>(.*?)</span></li>', block, re.S)
    assert cost and cost.groups()[:3] == ("500", "4", "200")
    assert text_of(cost.group(4)) == "500 optimizer steps in 4 trials (prescreen 200)"
    # the rank curve: the prefix values beside the separately trained ranks, the candidate marked
    svg = block.split('aria-label="eval_loss against rank for nested default"')[1].split("</svg>")[0]
    assert "nested prescreen (one run)" in svg and "prescreen candidate r=4, confirmed" in svg
    # r=8's row counts the trial that trained r=8 on its own, not the prescreen that read it as a prefix
    assert int(cell(evidence_rows(block)[8], "trials")[0]["data-sort"]) == 1


def test_the_report_shows_the_prescreen_beside_the_ladder(tmp_path):
    """The ladder's block: the prescreen curve in its figure, its table (prefix value, separately trained value,
    gap, each doubling's verdict on both curves), candidate, verdict, agreement and cost; a contradicted
    prescreen is a warning with its fallback; a ladder without one has no prescreen block."""
    import dataclasses

    from ranksweep.report import render_report

    data = _prescreen_study()
    text = render_report([data], generated="now")
    check_offline(text)
    _check_prescreen_block(ladder_block(study_section(text, "nested"), "default"))
    fallback = "r=8 is better than r=4 by more than the margin: the ladder runs from r=16"
    contradicted = render_report([_prescreen_study("contradicted", fallback)], generated="now")
    box = re.search(r'<div class="warning prescreen-outcome"[^>]*>(.*?)</div>', contradicted, re.S)
    assert box and text_of(box.group(1)) == ("⚠ Contradicted (ranks trained on their own to confirm it: r=2, r=4, "
                                             f"r=8); {fallback}")
    (lad,) = data.ladders
    plain = dataclasses.replace(lad, prescreen=None)
    text = render_report([dataclasses.replace(data, ladders=[plain], trials=[r for r in data.trials if r.number != 1])],
                         generated="now")
    assert 'class="prescreen' not in text and "nested prescreen" not in text
    cost = re.search(r'<span class="cost"[^>]*>(.*?)</span></li>', text, re.S)
    assert text_of(cost.group(1)) == "300 optimizer steps in 3 trials"


def test_the_prescreen_table_in_chromium(tmp_path):
    """The page with a prescreen, as Chromium reads it: its scripts run to the end (the prescreen table is
    sortable like the others) and the prescreen block is as rendered."""
    from ranksweep.report import render_report

    path = tmp_path / "nested.html"
    path.write_text(render_report([_prescreen_study()], generated="now"))
    dom = open_dom(tmp_path, path)
    _check_prescreen_block(ladder_block(study_section(dom, "nested"), "default"))
