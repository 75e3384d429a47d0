"""A catalogue of bad input, as a careless or hostile user would try it: config values, data, storages,
the filesystem, the subcommands. Each case ends with one line on stderr, its exit code (2 for a user
error, 1 for a failure such as a NaN loss, a damaged storage or a crash), no traceback, no secret
echoed, and nothing saved before it is changed.

One good single run and one good tiny sweep go first (in a temp working dir); every file is
fingerprinted; every case runs (a few at a time); the fingerprints are compared. Most cases fail
before any training; the few that load the tiny model or train a few steps are marked below.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import subprocess_env, write_toy_jsonl
from helpers.run import BIN as RANKSWEEP

RUN = ("model=tiny_llama", "trainer=tiny", "logger=none", "data.max_examples=60", "data.eval_size=10",
       "data.metric_examples=2", "trainer.max_steps=2")
SWEEP = ("--config-dir", "conf", "-m", "model=tiny_llama", "logger=none", "data.max_examples=60", "data.eval_size=10",
         "data.metric_examples=2", "hydra.sweeper.max_rank=8")
GOOD_SWEEP = ("trainer=mine", "hydra.sweeper.study_name=good")  # conf/trainer/mine.yaml
PASSWORD = "hunter2-not-shown"
# What an edited config file looks like: the good sweep's trainer, another learning rate.
MINE = "defaults:\n  - tiny\n  - _self_\n\nmax_steps: 2\neval_every: 2\n"


def ranksweep(cwd: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([RANKSWEEP, *args], cwd=cwd, check=False, capture_output=True, text=True,
                          env=subprocess_env(**env), timeout=timeout, stdin=subprocess.DEVNULL)


def fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _damage_sqlite(src: Path, dst: Path) -> None:
    """A copy of ``src`` whose b-tree pages (all but the first) are overwritten: SQLite's quick_check fails."""
    data = bytearray(src.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(2 * page, len(data), 3 * page):
        data[start:start + page] = os.urandom(min(page, len(data) - start))
    dst.write_bytes(bytes(data))


def _journal(path: Path) -> None:
    """An Optuna journal holding one study with one trial, then a torn record in its middle."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="j", storage=storage)
    study.tell(study.ask(), 1.0)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(1, b'{"op_code": 0, "worker_id": "x", "study_na\n')
    path.write_bytes(b"".join(lines))


def _files(w: Path) -> None:
    data = w / "data"
    data.mkdir()
    write_toy_jsonl(data / "toy.jsonl", n=60)
    (data / "raw.jsonl").write_text("".join(json.dumps({"text": f"word {i} and more words"}) + "\n" for i in range(60)))
    (data / "empty_text.jsonl").write_text((json.dumps({"text": ""}) + "\n") * 60)
    (data / "blank_text.jsonl").write_text((json.dumps({"text": "   "}) + "\n") * 60)
    (w / "afile").write_text("a regular file\n")
    (w / "no_model").mkdir()
    (w / "fake.gguf").write_text("not a GGUF file\n")
    (w / "two_ggufs").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (w / "two_ggufs" / name).write_bytes(b"GGUF\x03\x00\x00\x00")
    (w / "adapter_only").mkdir()
    (w / "adapter_only" / "adapter_config.json").write_text("{}")
    (w / "not_a_config").mkdir()
    (w / "not_a_config" / "config.json").write_text('{"hidden_size": 8}')
    (w / "no_weights").mkdir()
    (w / "no_weights" / "config.json").write_text('{"model_type": "llama"}')
    (w / "no_weights" / "tokenizer.json").write_text("{}")
    (w / "conf" / "trainer").mkdir(parents=True)
    (w / "conf" / "trainer" / "mine.yaml").write_text(MINE)
    con = sqlite3.connect(w / "users.db")
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    _journal(w / "torn.log")


# id -> (arguments, exit code, what the line says, extra environment). {w}: the working dir.
CASES: dict[str, tuple[tuple[str, ...], int, tuple[str, ...], dict[str, str]]] = {
    # -- config values: every float finite and in range, cross-key checks (exit 2, nothing loaded)
    "weight_decay_nan": (("trainer.weight_decay=nan",), 2, ("trainer.weight_decay must be a finite number",), {}),
    "weight_decay_inf": (("trainer.weight_decay=inf",), 2, ("trainer.weight_decay", "inf"), {}),
    "weight_decay_negative": (("trainer.weight_decay=-0.1",), 2, ("trainer.weight_decay must be in [0, inf)",), {}),
    "lr_inf": (("trainer.lr=inf",), 2, ("trainer.lr must be a finite number",), {}),
    "lr_minus_inf": (("trainer.lr=-inf",), 2, ("trainer.lr",), {}),
    "warmup_nan": (("trainer.warmup_ratio=nan",), 2, ("trainer.warmup_ratio must be a finite number",), {}),
    "dropout_nan": (("lora.dropout=nan",), 2, ("lora.dropout must be a finite number",), {}),
    "alpha_inf": (("lora.alpha=inf",), 2, ("lora.alpha must be a finite number",), {}),
    "eval_size_inf": (("data.eval_size=inf",), 2, ("data.eval_size must be a finite number",), {}),
    "memory_limit_nan": (("trainer.memory_limit_gb=nan",), 2, ("trainer.memory_limit_gb",), {}),
    "params_b_negative": (("model.params_b=-1",), 2, ("model.params_b must be in (0, inf)",), {}),
    "prune_after_over_1": (("trial.prune_after=1.5",), 2, ("trial.prune_after must be in [0, 1]",), {}),
    "seed_negative": (("trainer.seed=-1",), 2, ("trainer.seed must be an integer in [0, 4294967295]",), {}),
    "data_seed_too_big": (("data.seed=4294967296",), 2, ("data.seed",), {}),
    "exact_match_no_examples": (("objective=exact_match", "data.metric_examples=0"), 2,
                                ("objective=exact_match needs data.metric_examples > 0",), {}),
    "exact_match_metric_none": (("objective=exact_match", "data.metric=none"), 2,
                                ("objective=exact_match needs data.metric=exact_match",), {}),
    "exact_match_on_raw_text": (("objective=exact_match", "data=jsonl", "data.path={w}/data/raw.jsonl",
                                 "data.text_column=text"), 2, ("objective=exact_match needs prompt/response data",),
                                {}),
    "exact_match_on_found_raw_text": (("objective=exact_match", "data=jsonl", "data.path={w}/data/raw.jsonl"), 2,
                                      ("objective=exact_match needs prompt/response data",), {}),
    # -- model.id: a folder that is not a model, a name that would become a path (exit 2, nothing loaded)
    "model_empty_folder": (("model.id={w}/no_model",), 2, ("model.id", "no model in it"), {}),
    "model_adapter_folder": (("model.id={w}/adapter_only",), 2, ("model.id", "LoRA adapter"), {}),
    "model_file": (("model.id={w}/afile",), 2, ("model.id", "is a file"), {}),
    "model_config_not_a_model": (("model.id={w}/not_a_config",), 2, ("model.id", "no model_type"), {}),
    "model_without_weights": (("model.id={w}/no_weights",), 2, ("model.id", "without weights"), {}),
    "model_missing_folder": (("model.id=./no/such/model",), 2, ("model.id: folder not found",), {}),
    "model_tiny_path": (("model.id=tiny:../../x",), 2, ("model.id: tiny:<family>",), {}),
    "model_fake_gguf": (("model.id={w}/fake.gguf",), 2, ("model.id", "is not a GGUF file"), {}),
    "model_two_ggufs": (("model.id={w}/two_ggufs",), 2, ("model.id", "holds 2 GGUF files", "point model.id at one"),
                        {}),
    # -- data (the tiny model is loaded, nothing trains)
    "empty_texts": (("data=jsonl", "data.path={w}/data/empty_text.jsonl", "data.text_column=text"), 2,
                    ("no trainable tokens in the training set",), {}),
    "blank_texts": (("data=jsonl", "data.path={w}/data/blank_text.jsonl", "data.text_column=text"), 2,
                    ("no trainable tokens",), {}),
    "missing_data": (("data=jsonl", "data.path={w}/data/none.jsonl"), 2, ("data.path", "none.jsonl"), {}),
    # -- the filesystem (exit 2: the user's folder; exit 1: a failure inside the job)
    "run_dir_under_file": (("hydra.run.dir={w}/afile/run",), 2, ("hydra.run.dir: cannot create", "Not a directory"),
                           {}),
    "run_dir_in_proc": (("hydra.run.dir=/proc/ranksweep-run",), 2, ("hydra.run.dir: cannot create",), {}),
    "output_dir_under_file": (("output_dir={w}/afile/out",), 2, ("output_dir: cannot create", "Not a directory"), {}),
    # -- failures of a single run (exit 1; these train a few steps)
    "nan_loss": (("trainer.lr=1e12", "trainer.max_steps=4", "trainer.eval_every=2"), 1, ("trial failed (nan)",), {}),
    "crash_in_trial": ((), 1, ("RuntimeError: injected fault", "HYDRA_FULL_ERROR=1"), {"RANKSWEEP_FAULT": "8"}),
    # -- sweeps: names that become paths, the study's identity, damaged storages (exit 2, or 1: damaged)
    "study_escape": (("hydra.sweeper.study_name=../../escape",), 2, ("hydra.sweeper.study_name must be",), {}),
    "study_slash": (("hydra.sweeper.study_name=a/b",), 2, ("hydra.sweeper.study_name", "'a/b'"), {}),
    "study_hidden": (("hydra.sweeper.study_name=.hidden",), 2, ("hydra.sweeper.study_name",), {}),
    "study_space": (("hydra.sweeper.study_name='two words'",), 2, ("hydra.sweeper.study_name",), {}),
    "study_on_second_storage": ((*GOOD_SWEEP, "hydra.sweeper.storage=sqlite:///outputs/other.db"), 2,
                                ("hydra.sweep.dir", "holds the trials of study 'good'"), {}),
    "study_config_file_edited": (GOOD_SWEEP, 2, ("study 'good' was started with another trial config",
                                                 "trainer.lr"), {}),
    "study_other_overrides": ((*GOOD_SWEEP, "trainer.eval_every=1"), 2, ("different search space",), {}),
    "storage_damaged_sqlite": (("hydra.sweeper.study_name=d1", "hydra.sweeper.storage=sqlite:///damaged.db"), 1,
                               ("damaged.db is damaged", "not written to", ".recover"), {}),
    "storage_torn_journal": (("hydra.sweeper.study_name=d2", "hydra.sweeper.storage=journal://{w}/torn.log"), 1,
                             ("torn.log is damaged at line 2", "not written to"), {}),
    "storage_not_optuna": (("hydra.sweeper.study_name=d3", "hydra.sweeper.storage=sqlite:///users.db"), 2,
                           ("not an Optuna storage",), {}),
    "storage_under_file": (("hydra.sweeper.study_name=d4", "hydra.sweeper.storage=sqlite:///afile/x.db"), 2,
                           ("hydra.sweeper.storage",), {}),
    "storage_unreachable_password": (("hydra.sweeper.study_name=d5",
                                      f"hydra.sweeper.storage=postgresql://u:{PASSWORD}@127.0.0.1:1/db"), 2,
                                     ("hydra.sweeper.storage: cannot open postgresql://u:***@127.0.0.1:1/db",), {}),
    "sweep_dir_under_file": (("hydra.sweeper.study_name=d6", "hydra.sweep.dir={w}/afile/sweep"), 2,
                             ("hydra.sweep.dir: cannot create",), {}),
    # -- subcommands
    "report_out_under_file": (("report", "good", "--out", "{w}/afile/r.html"), 2, ("--out: cannot write",), {}),
    "report_out_in_proc": (("report", "good", "--out", "/proc/ranksweep-report.html"), 2, ("--out: cannot write",),
                           {}),
    "report_damaged": (("report", "good", "--storage", "sqlite:///damaged.db"), 1, ("is damaged",), {}),
    "report_torn_journal": (("report", "j", "--storage", "journal://{w}/torn.log"), 1, ("damaged at line 2",), {}),
    "report_unknown_study": (("report", "nope"), 2, ("study 'nope' not found",), {}),
    "report_missing_storage": (("report", "good", "--storage", "sqlite:///missing.db"), 2, ("no such database",), {}),
    "sync_unknown_study": (("sync", "nope"), 2, ("study 'nope' not found",), {}),
    "dashboard_port_0": (("dashboard", "--port", "0"), 2, ("--port",), {}),
    "dashboard_damaged": (("dashboard", "--storage", "sqlite:///damaged.db"), 1, ("is damaged",), {}),
    "estimate_nan": (("estimate", "model=tiny_llama", "trainer.weight_decay=nan"), 2, ("trainer.weight_decay",), {}),
    "estimate_no_model": (("estimate", "model.id={w}/no_model"), 2, ("no model in it",), {}),
}


def _args(case: str, w: Path) -> list[str]:
    args, *_ = CASES[case]
    args = [a.replace("{w}", str(w)) for a in args]
    if args and args[0] in ("report", "sync", "dashboard", "estimate"):
        return args
    if case.startswith(("study_", "storage_", "sweep_")):
        return [*SWEEP, *args]
    return [*RUN, *args]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad-input")
    _files(w)
    good = ranksweep(w, *RUN, "data=jsonl", f"data.path={w / 'data' / 'toy.jsonl'}")
    assert good.returncode == 0, good.stderr[-3000:]
    swept = ranksweep(w, *SWEEP, *GOOD_SWEEP)
    assert swept.returncode == 0, swept.stderr[-3000:]
    _damage_sqlite(w / "outputs" / "ranksweep.db", w / "damaged.db")
    # The config file the good sweep was started with, edited afterwards.
    (w / "conf" / "trainer" / "mine.yaml").write_text(MINE + "lr: 0.001\n")
    before = fingerprint(w)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c: pool.submit(ranksweep, w, *_args(c, w), **CASES[c][3]) for c in CASES}
        results = {c: f.result() for c, f in futures.items()}
    return {"w": w, "before": before, "results": results}


def test_catalogue_is_large():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(world, case):
    proc = world["results"][case]
    _, code, needles, _ = CASES[case]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error: "), proc.stderr[-3000:]
    assert proc.returncode == code, (proc.returncode, lines[0])
    for needle in needles:
        assert needle.replace("{w}", str(world["w"])) in lines[0], (needle, lines[0])
    assert PASSWORD not in proc.stdout + proc.stderr


def test_nothing_saved_was_changed(world):
    w, before = world["w"], world["before"]
    after = fingerprint(w)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"bad input changed saved files: {changed}"
    run_dir = next(p for p in before if p.startswith("outputs/runs/")).split("/")[2]
    added = [p for p in after if p not in before and p.startswith((f"outputs/runs/{run_dir}/", "outputs/sweeps/good/"))]
    assert not added, f"bad input wrote into earlier outputs: {added}"
    assert not (w / "outputs" / "sweeps" / "escape").exists() and not (w.parent / "escape").exists()
    assert not (w / "outputs" / "other.db").exists() and not (w / "outputs" / "sweeps" / "a").exists()
    # No refused sweep left a trial or a study folder behind; no report was written.
    new = [p for p in after if p not in before]
    assert not [p for p in new if "/trial-" in p or p.endswith((".html", "metrics.json", ".safetensors"))], new


def test_full_error_shows_the_traceback(world):
    """HYDRA_FULL_ERROR=1 still shows the traceback, for a run and for a subcommand."""
    w = world["w"]
    proc = ranksweep(w, *RUN, f"hydra.run.dir={w / 'afile' / 'x'}", HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]
    proc = ranksweep(w, "report", "good", "--out", str(w / "afile" / "r.html"), HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("column", [("data.text_column=text",), ()], ids=["text_column", "found"])
def test_raw_text_on_a_base_model_trains_without_generation(tmp_path, column):
    """Raw text (named, or found by data.format=auto) with the default data.metric=exact_match: generation
    is off (data.metric=none), not a crash after training; config.yaml records what ran."""
    data = tmp_path / "raw.jsonl"
    data.write_text("".join(json.dumps({"text": f"word {i} and more words"}) + "\n" for i in range(60)))
    proc = ranksweep(tmp_path, *RUN, "model.variant=base", "data=jsonl", f"data.path={data}", *column)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "exact_match" not in metrics and metrics["steps"] == 2
    assert "metric: none" in (run_dir / "config.yaml").read_text()
