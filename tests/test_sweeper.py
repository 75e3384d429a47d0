"""End-to-end rank-doubling sweeps on a tiny model, on CPU, with SQLite storage.

Every test drives the real ``ranksweep -m`` command (Hydra multirun, our
sweeper plugin, Optuna, the Trainer, offline W&B) in a temp folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import CHECKS
from helpers.run import BIN, TINY_SWEEP, Result, curve, inprocess, ranksweep, summary
from helpers.run import env as _env
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

TINY = [*TINY_SWEEP, "hydra.sweeper.min_gain=0.0"]


def sweep(cwd: Path, cache: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return ranksweep(cwd, "-m", *TINY, *args, cache=cache, timeout=timeout, **env)


def refused(cwd: Path, cache: Path, *args: str) -> Result:
    """A sweep refused before any trial: run by this process, through the command's entry point (the real
    script's one line is test_bad_input.py's)."""
    return inprocess(cwd, "-m", *TINY, *args, cache=cache)


def load_study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'outputs' / 'ranksweep.db'}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full(tmp_path_factory, cache):
    cwd = tmp_path_factory.mktemp("full")
    proc = sweep(cwd, cache, "hydra.sweeper.study_name=full", *CHECKS)  # the noise seeds and budget check too
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_sweep_end_to_end(full):
    cwd, proc = full
    study = load_study(cwd, "full")
    trials = study.get_trials()
    base = [t for t in trials if t.user_attrs["role"] == "base"]
    rungs = [t for t in trials if t.user_attrs["role"] == "rung"]
    assert len(base) == 1 and base[0].state == TrialState.COMPLETE
    firsts = [t for t in rungs if t.user_attrs["seed"] == 0]
    assert [t.params["rank"] for t in firsts] == [8, 16, 32][: len(firsts)]
    # the noise seeds: the first rank again, at seeds 1 and 2
    assert sorted((t.params["rank"], t.user_attrs["seed"]) for t in rungs if t not in firsts) == [(8, 1), (8, 2)]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in rungs)
    for t in rungs:
        a = t.user_attrs
        assert a["trainable_params"] > 0 and a["peak_mem_gb"] > 0 and a["duration_s"] > 0
        assert Path(a["output_dir"], "adapter", "adapter_model.safetensors").is_file()
        assert Path(a["wandb_run"]).is_dir()
        assert t.intermediate_values, "eval values reported during training"
    # trainable params double with the rank; alpha stays lora.alpha (alpha_rule=fixed: scale alpha/r)
    by_rank = {t.params["rank"]: t for t in firsts}
    assert by_rank[16].user_attrs["trainable_params"] == 2 * by_rank[8].user_attrs["trainable_params"]
    assert by_rank[16].user_attrs["alpha"] == 16
    for t in rungs:  # what the paired comparisons and the budget reading need
        ex = t.user_attrs["eval_examples"]
        assert len(ex["loss"]) == len(ex["tokens"]) == 16 and ex["fingerprint"]
        assert sum(ex["loss"]) / sum(ex["tokens"]) == pytest.approx(t.user_attrs["eval_loss"], rel=1e-6)
        assert 0 < t.user_attrs["supervised_tokens"] and t.user_attrs["lr"] == 5e-3
        assert 1 <= t.user_attrs["adapter"]["effective_rank"] <= t.params["rank"]

    doc = summary(cwd, "full")
    (lad,) = doc["ladders"]
    assert lad["base"] == pytest.approx(base[0].value)
    for rung in lad["rungs"]:
        t = by_rank[rung["rank"]]
        seeds = sorted((x for x in rungs if x.params["rank"] == rung["rank"]), key=lambda x: x.user_attrs["seed"])
        assert sorted(rung["trial_numbers"]) == sorted(x.number for x in seeds) and t.number in rung["trial_numbers"]
        if t.state == TrialState.COMPLETE:
            assert sorted(rung["values"]) == pytest.approx(sorted(x.value for x in seeds if x.value is not None))
            metrics = json.loads(Path(t.user_attrs["output_dir"], "metrics.json").read_text())
            assert metrics["eval_loss"] == pytest.approx(t.value)
    rec = lad["recommendation"]
    assert rec["rank"] in by_rank and rec["why"]
    assert lad["stop_reason"]
    png = cwd / "outputs" / "sweeps" / "full" / "rank_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"r={rec['rank']}" in proc.stdout and "rank" in proc.stdout
    # Progress, as plain log lines off a terminal: training steps inside a trial, trials across the sweep.
    assert "step 10/12  loss" in proc.stdout  # trainer=tiny logs every 5 steps
    assert f"sweep full: {len(trials)} done, 0 failed" in proc.stdout


def _inspect(run_dir: str) -> dict:
    """``wandb leet inspect`` of an offline run. W&B's service process may still be flushing a run
    for a moment after the sweep exits (seen once under load), so a failed read is retried twice."""
    for _ in range(3):
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                              run_dir], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            try:
                return json.loads(out.stdout)
            except json.JSONDecodeError:
                pass
        time.sleep(2)
    raise AssertionError(f"wandb leet inspect {run_dir}: rc {out.returncode}: {out.stdout[-500:]} "
                         f"{out.stderr[-1000:]}")


def test_wandb_runs_agree_with_study(full):
    cwd, _ = full
    study = load_study(cwd, "full")
    for t in study.get_trials():
        if t.state != TrialState.COMPLETE or t.user_attrs["role"] != "rung":
            continue
        doc = _inspect(t.user_attrs["wandb_run"])
        text = json.dumps(doc)
        assert "full" in text  # group = study name
        assert f"r{t.params['rank']}-a16-all_linear-nf4" in text  # run name
        assert doc["summary"]["eval_loss"] == pytest.approx(t.value, rel=1e-9)  # summary eval_loss
    (run,) = list((cwd / "outputs" / "sweeps" / "full" / "wandb").glob("offline-run-*"))  # one summary run
    doc = _inspect(str(run))
    rec = summary(cwd, "full")["ladders"][0]["recommendation"]
    assert doc["name"] == "full-summary" and doc["state"] == "finished"
    assert doc["summary"]["recommended_rank"] == rec["rank"]
    assert doc["summary"]["rank_curve"]["_type"] == "table-file" and doc["summary"]["rank_curve"]["nrows"] >= 1


def test_optuna_cli_reads_the_study(full):
    cwd, _ = full
    optuna_bin = str(Path(sys.executable).parent / "optuna")
    storage = f"sqlite:///{cwd / 'outputs' / 'ranksweep.db'}"
    out = subprocess.run([optuna_bin, "trials", "--study-name", "full", "--storage", storage, "-f", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["params_rank"] if "params_rank" in r else r["params"]["rank"] for r in rows} >= {0, 8}
    best = subprocess.run([optuna_bin, "best-trial", "--study-name", "full", "--storage", storage, "-f", "json"],
                          capture_output=True, text=True, timeout=120)
    assert best.returncode == 0, best.stderr


def _kill_mid_trial(args: list[str], cwd: Path, cache: Path) -> tuple[int, dict]:
    """Start the sweep and SIGKILL it while a rank trains (an eval reported, the last one not yet); returns
    the rank and the trials as they were. A kill that raced the trial's end (nothing was running when it
    landed) is tried again on the resumed sweep, up to three times."""
    for _ in range(3):
        proc = subprocess.Popen(args, cwd=cwd, env=_env(cache), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        killed_rank, deadline = None, time.time() + 400
        try:
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.5)
                try:
                    trials = load_study(cwd, "resumed").get_trials()
                except Exception:  # the storage is not created yet
                    continue
                done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "rung"]
                running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("rank", 0) > 0
                           and t.intermediate_values and max(t.intermediate_values) < 12]  # TINY: 12 steps
                if done and running:
                    killed_rank = running[0].user_attrs["rank"]
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert killed_rank is not None, "the sweep never reached a second rank"
        before = {t.number: (t.state, t.value) for t in load_study(cwd, "resumed").get_trials()}
        if any(state == TrialState.RUNNING for state, _ in before.values()):
            return killed_rank, before
    raise AssertionError("three kills in a row landed after the trial had finished")


def test_resume_after_sigkill_repeats_no_rank(tmp_path, cache, full):
    cwd = tmp_path
    args = [BIN, "-m", *TINY, *CHECKS, "hydra.sweeper.study_name=resumed",  # as `full` ran, to compare with it
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    killed_rank, before = _kill_mid_trial(args, cwd, cache)

    time.sleep(4)  # past the grace period: the killed trial's heartbeat is stale
    again = subprocess.run(args, cwd=cwd, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load_study(cwd, "resumed").get_trials()
    for number, (state, value) in before.items():  # nothing stored was lost or rewritten
        if state == TrialState.COMPLETE:
            assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
    done = [(t.user_attrs["rank"], t.user_attrs["seed"], t.user_attrs["slot"]) for t in trials
            if t.state == TrialState.COMPLETE]
    assert len(done) == len(set(done)), f"a completed rank ran twice: {done}"
    killed = [n for n, (state, _) in before.items() if state == TrialState.RUNNING]
    assert killed, f"no trial was running when the worker was killed: {before}"
    assert all(trials[n].state == TrialState.FAIL for n in killed), "the killed trial is marked failed"
    assert killed_rank in {trials[n].user_attrs.get("rank") for n in killed}
    dirs = [t.user_attrs["output_dir"] for t in trials]
    assert len(dirs) == len(set(dirs)), "output dirs of a resumed sweep do not collide"
    assert curve(summary(cwd, "resumed")) == curve(summary(full[0], "full"))


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path, cache):
    proc = sweep(tmp_path, cache, "hydra.sweeper.study_name=faulty", RANKSWEEP_FAULT="16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load_study(tmp_path, "faulty").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["rank"] for t in failed] == [16]
    assert "injected fault" in failed[0].user_attrs["fail_reason"]
    assert any(t.user_attrs["rank"] == 32 and t.state == TrialState.COMPLETE for t in trials)
    rungs = {r["rank"]: r for r in summary(tmp_path, "faulty")["ladders"][0]["rungs"]}
    assert rungs[16]["state"] == "FAIL" and "injected fault" in rungs[16]["fail_reason"]


def test_nan_loss_is_a_failed_trial(tmp_path, cache):
    proc = sweep(tmp_path, cache, "hydra.sweeper.study_name=nan", "hydra.sweeper.max_rank=8", "trainer.lr=1e12",
                 "trainer.schedule=constant")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = [t for t in load_study(tmp_path, "nan").get_trials() if t.user_attrs["rank"] == 8]
    assert t.state == TrialState.FAIL
    assert "non-finite" in t.user_attrs["fail_reason"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("override, key", [
    ("hydra.sweeper.start_rank=0", "hydra.sweeper.start_rank"),
    ("hydra.sweeper.factor=1", "hydra.sweeper.factor"),
    ("hydra.sweeper.max_rank=4", "hydra.sweeper.max_rank"),
    ("hydra.sweeper.storage=postgresql://ranksweep:secret@127.0.0.1:9/none", "hydra.sweeper.storage"),
    ("hydra.sweeper.storage=notaurl", "hydra.sweeper.storage"),
    ("lora.r=4,8", "lora.r"),
])
def test_bad_sweep_input_is_one_line(tmp_path, cache, override, key):
    proc = refused(tmp_path, cache, override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error:"), proc.stderr[-2000:]
    assert key in lines[0] and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr


def test_reused_study_with_other_space_is_refused(full, cache):
    cwd, _ = full
    db = cwd / "outputs" / "ranksweep.db"
    before = [(t.number, t.state, t.value) for t in load_study(cwd, "full").get_trials()]
    summary_before = _sha(cwd / "outputs" / "sweeps" / "full" / "sweep_summary.json")
    proc = refused(cwd, cache, "hydra.sweeper.study_name=full", "lora.targets=attention,all_linear")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "hydra.sweeper.study_name" in lines[0] and "different search space" in lines[0]
    assert [(t.number, t.state, t.value) for t in load_study(cwd, "full").get_trials()] == before
    assert _sha(cwd / "outputs" / "sweeps" / "full" / "sweep_summary.json") == summary_before
    assert db.exists()


def test_sweep_aborts_past_max_failure_rate(tmp_path, cache):
    proc = sweep(tmp_path, cache, "hydra.sweeper.study_name=doomed", "hydra.sweeper.max_failure_rate=0.5",
                 RANKSWEEP_FAULT="8,16,32")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "max_failure_rate" in lines[0], proc.stderr[-2000:]
    trials = load_study(tmp_path, "doomed").get_trials()
    assert [t.user_attrs["rank"] for t in trials if t.state == TrialState.FAIL] == [8, 16]


def test_ranks_that_would_not_fit_are_skipped(tmp_path, cache):
    """A limit between the r=8 and r=16 estimates: r=8 trains, r=16 is recorded infeasible, not run."""
    from helpers import compose

    from ranksweep.config import to_run_config
    from ranksweep.memory import GB, plan_memory

    fixed = ["trainer.gradient_checkpointing=false", "trainer.dequant_cache=false"]  # no plan to adapt
    shrink = [a for a in TINY if not a.startswith("hydra.")] + fixed
    est = {r: plan_memory(to_run_config(compose(*shrink, f"lora.r={r}")), "cpu").estimate.total / GB
           for r in (8, 16)}
    assert est[8] < est[16]
    limit = (est[8] + est[16]) / 2
    proc = sweep(tmp_path, cache, "hydra.sweeper.study_name=fit", *fixed, f"trainer.memory_limit_gb={limit}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load_study(tmp_path, "fit").get_trials()
    by_rank = {t.user_attrs["rank"]: t for t in trials}
    assert sorted(by_rank) == [0, 8, 16], "nothing past the first rank that does not fit"
    assert by_rank[8].state == TrialState.COMPLETE
    skipped = by_rank[16]
    assert skipped.state == TrialState.FAIL and skipped.user_attrs["failure_kind"] == "infeasible"
    assert "would not fit" in skipped.user_attrs["fail_reason"] and "duration_s" not in skipped.user_attrs
    assert not (tmp_path / "outputs" / "sweeps" / "fit" / f"trial-{skipped.number:04d}-r16-s0").exists()
    (lad,) = summary(tmp_path, "fit")["ladders"]
    assert lad["stop_reason"].startswith("r=16 would not fit")
    assert [r["rank"] for r in lad["rungs"]] == [8] and lad["recommendation"]["rank"] == 8
