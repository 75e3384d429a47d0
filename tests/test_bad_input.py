"""The catalogue of bad input, as a careless or hostile user would try it: config values, data, storages,
the filesystem, the subcommands. Each case ends with one line on stderr, its exit code (2 for a user
error, 1 for a failure such as a NaN loss, a damaged storage or a crash), no traceback, no secret
echoed, and nothing saved before it is changed.

One good single run and one good tiny sweep go first (in a temp working dir, so Hydra's relative
``outputs/runs/...`` lands there); every file is fingerprinted (mtime and sha256); every case runs; the
fingerprints are compared. Most cases run in this process, through the command's own entry points
(:func:`helpers.run.run_inprocess`: ``ranksweep.cli.main`` for a run or a sweep, ``ranksweep.commands.main``
for a subcommand); the cases in :data:`SUBPROCESS` run the real installed command beside them, one per exit
code of a run and of a subcommand, and the crash injected with ``RANKSWEEP_FAULT``. Most cases fail before
any training; the few that load the tiny model or train a few steps are marked below. Ctrl-C (exit 130) is
``test_cli.py``'s; ``HYDRA_FULL_ERROR=1`` (read at import) is tested here with a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import SHRUNK_RUN, SHRUNK_SWEEP, subprocess_env, write_toy_jsonl
from helpers.run import BIN as RANKSWEEP
from helpers.run import run_inprocess

RUN = SHRUNK_RUN  # 2 steps of trainer=tiny
SWEEP = ("--config-dir", "conf", *SHRUNK_SWEEP)
GOOD_SWEEP = ("trainer=mine", "hydra.sweeper.study_name=good")  # conf/trainer/mine.yaml
PASSWORD = "hunter2-not-shown"
# What an edited config file looks like: the good sweep's trainer, another learning rate.
MINE = "defaults:\n  - tiny\n  - _self_\n\nmax_steps: 2\neval_every: 2\n"


def ranksweep(cwd: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """The real installed command in a subprocess."""
    return _child(cwd, args, subprocess_env(**env), timeout)


def _child(cwd: Path, args: Sequence[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RANKSWEEP, *args], cwd=cwd, check=False, capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


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
    (data / "empty.jsonl").write_text("")
    (data / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n'
                                    '{"prompt": "e", "response": \n{"prompt": "g", "response": "h"}\n')
    (data / "nocol.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
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


def _jsonl(name: str) -> tuple[str, str]:
    return ("data=jsonl", f"data.path={{w}}/data/{name}")


# id -> (arguments, exit code, what the line says, extra environment). {w}: the working dir; {good}: the
# good run's folder. A subcommand's arguments are its own; a sweep case (study_, storage_, sweep_) gets
# SWEEP before its own; every other case RUN.
CASES: dict[str, tuple[tuple[str, ...], int, tuple[str, ...], dict[str, str]]] = {
    # -- config values: types, keys, options, ranges, cross-key checks (exit 2, nothing loaded)
    "r_negative": (("lora.r=-4",), 2, ("lora.r", "-4"), {}),
    "r_text": (("lora.r=abc",), 2, ("lora.r: 'abc' is not an integer",), {}),
    "r_float": (("lora.r=2.5",), 2, ("lora.r: '2.5' is not an integer",), {}),
    "unknown_lora_key": (("lora.rank=8",), 2, ("lora.rank: unknown config key",), {}),
    "added_lora_key": (("+lora.foo=1",), 2, ("unknown config key(s): lora.foo",), {}),
    "alpha_negative": (("lora.alpha=-1", "lora.alpha_rule=fixed"), 2, ("lora.alpha", "-1"), {}),
    "unknown_family": (("model.family=gpt5",), 2, ("model.family", "gpt5"), {}),
    "unknown_role": (("lora.targets=atention",), 2, ("lora.targets", "atention"), {}),
    "bits_3": (("quant.bits=3",), 2, ("quant.bits must be 4, 8 or 16, got 3",), {}),
    "max_seq_len_0": (("trainer.max_seq_len=0",), 2, ("trainer.max_seq_len",), {}),
    "unknown_option": (("model=nope",), 2, ("model/nope",), {}),
    "unknown_key": (("+lr=1",), 2, ("unknown config key(s): lr",), {}),
    "no_data_path": (("data=jsonl",), 2, ("data.path",), {}),
    "optim_unknown": (("trainer.optim=lion",), 2, ("trainer.optim", "lion"), {}),
    "memory_limit_negative": (("trainer.memory_limit_gb=-1",), 2, ("trainer.memory_limit_gb", "-1"), {}),
    "ckpt_word": (("trainer.gradient_checkpointing=sometimes",), 2, ("trainer.gradient_checkpointing",), {}),
    "multirun_and_cfg": (("-m", "--cfg", "job"), 2, ("Only one of --run, --multirun, --cfg",), {}),
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
    "exact_match_on_raw_text": (("objective=exact_match", *_jsonl("raw.jsonl"), "data.text_column=text"), 2,
                                ("objective=exact_match needs prompt/response data",), {}),
    "exact_match_on_found_raw_text": (("objective=exact_match", *_jsonl("raw.jsonl")), 2,
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
    # -- the tiny model is loaded, nothing trains
    "missing_module": (("lora.targets=q_proj+c_attn",), 2, ("lora.targets", "c_attn"), {}),
    # -- data (the tiny model is loaded, nothing trains)
    "missing_file": (_jsonl("missing.jsonl"), 2, ("data.path", "missing.jsonl"), {}),
    "empty_file": (_jsonl("empty.jsonl"), 2, ("data.path", "empty.jsonl"), {}),
    "malformed_jsonl": (_jsonl("bad.jsonl"), 2, ("data.path", "bad.jsonl", "line 3"), {}),
    "missing_column": (_jsonl("nocol.jsonl"), 2, ("data.response_column", "nocol.jsonl", "'response'"), {}),
    # Pointed at the good run's folder: the error comes before anything is written there.
    "bad_data_into_old_dir": ((*_jsonl("bad.jsonl"), "output_dir={good}"), 2, ("bad.jsonl", "line 3"), {}),
    "empty_texts": ((*_jsonl("empty_text.jsonl"), "data.text_column=text"), 2,
                    ("no trainable tokens in the training set",), {}),
    "blank_texts": ((*_jsonl("blank_text.jsonl"), "data.text_column=text"), 2, ("no trainable tokens",), {}),
    "missing_data": (_jsonl("none.jsonl"), 2, ("data.path", "none.jsonl"), {}),
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
# Run by the real installed command, in a subprocess: each exit code of a run (2, 1) and of a subcommand
# (2, and 1 through the same describe_failure), for the promise that the script itself prints one line and no
# traceback; and the crash injected with RANKSWEEP_FAULT (exit 1). The rest run in this process.
SUBPROCESS = ("r_text", "crash_in_trial", "report_unknown_study", "report_damaged")
SUBCOMMANDS = ("report", "sync", "dashboard", "estimate", "export")


def _args(case: str, w: Path, good: Path) -> list[str]:
    args, *_ = CASES[case]
    args = [a.replace("{w}", str(w)).replace("{good}", str(good)) for a in args]
    if args and args[0] in SUBCOMMANDS:
        return args
    if case.startswith(("study_", "storage_", "sweep_")):
        return [*SWEEP, *args]
    return [*RUN, *args]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad-input")
    _files(w)
    good = run_inprocess(w, *RUN, "data=jsonl", f"data.path={w / 'data' / 'toy.jsonl'}")
    assert good.code == 0, good.stderr[-3000:]
    runs = sorted((w / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    swept = run_inprocess(w, *SWEEP, *GOOD_SWEEP)
    assert swept.code == 0, swept.stderr[-3000:]
    _damage_sqlite(w / "outputs" / "ranksweep.db", w / "damaged.db")
    # The config file the good sweep was started with, edited afterwards.
    (w / "conf" / "trainer" / "mine.yaml").write_text(MINE + "lr: 0.001\n")
    before = fingerprint(w)
    results = {}
    # The subprocesses run beside the in-process cases (which go one at a time: they share this process); each
    # child's environment is made here, before an in-process case changes this process's.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(_child, w, _args(c, w, runs[0]), subprocess_env(**CASES[c][3]))
                   for c in SUBPROCESS}
        for c in CASES:
            if c not in SUBPROCESS:
                results[c] = run_inprocess(w, *_args(c, w, runs[0]), **CASES[c][3])
        results.update({c: f.result() for c, f in futures.items()})
    return {"w": w, "good": good, "good_dir": runs[0], "before": before, "results": results}


def test_catalogue_is_large():
    assert len(CASES) >= 60


def test_the_subprocess_cases_cover_every_exit_code_of_a_run_and_a_subcommand():
    assert set(SUBPROCESS) <= set(CASES)
    runs = {CASES[c][1] for c in SUBPROCESS if CASES[c][0][:1] != ("report",)}
    subcommands = {CASES[c][1] for c in SUBPROCESS if CASES[c][0][:1] == ("report",)}
    assert runs == subcommands == {1, 2}
    assert "crash_in_trial" in SUBPROCESS  # RANKSWEEP_FAULT: a crash is a process's


def test_good_run(world):
    good, good_dir = world["good"], world["good_dir"]
    assert "Traceback" not in good.stdout + good.stderr
    metrics = json.loads((good_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["trainable_params"] == 38912 and metrics["wandb_run"] is None
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.yaml",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (good_dir / name).is_file(), name
    assert f"adapter:  {good_dir}/adapter" in good.stdout


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
    good_rel = str(world["good_dir"].relative_to(w))
    added = [p for p in after if p not in before and p.startswith((f"{good_rel}/", "outputs/sweeps/good/"))]
    assert not added, f"bad input wrote into earlier outputs: {added}"
    assert not (w / "outputs" / "sweeps" / "escape").exists() and not (w.parent / "escape").exists()
    assert not (w / "outputs" / "other.db").exists() and not (w / "outputs" / "sweeps" / "a").exists()
    # No refused run or sweep left a trial, a study folder, an adapter or metrics behind; no report was written.
    new = [p for p in after if p not in before]
    assert not [p for p in new if "/trial-" in p or p.endswith((".html", "metrics.json", ".safetensors"))], new


def test_full_error_shows_the_traceback(world):
    """HYDRA_FULL_ERROR=1 (read when ranksweep is imported: a process of its own) still shows the traceback,
    for a run and for a subcommand."""
    w = world["w"]
    proc = ranksweep(w, *RUN, f"hydra.run.dir={w / 'afile' / 'x'}", HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]
    proc = ranksweep(w, "report", "good", "--out", str(w / "afile" / "r.html"), HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]


def test_estimate_bad_override_is_one_line(tmp_path):
    """`ranksweep estimate` composes through ranksweep.compose: the same one-line errors as a run."""
    for args, line in [(("lora.r=abc",), "lora.r: 'abc' is not an integer"),
                       (("lora.r=-4",), "lora.r must be a positive integer, got -4"),
                       (("model=nope",), "Could not find 'model/nope'")]:
        proc = run_inprocess(tmp_path, "estimate", "model=tiny_llama", *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and line in proc.stderr, proc.stderr
        assert proc.stderr.startswith("ranksweep: error: ") and "Traceback" not in proc.stdout + proc.stderr
        assert not any(tmp_path.iterdir()), "estimate wrote files"


@pytest.mark.parametrize("column", [("data.text_column=text",), ()], ids=["text_column", "found"])
def test_raw_text_on_a_base_model_trains_without_generation(tmp_path, column):
    """Raw text (named, or found by data.format=auto) with the default data.metric=exact_match: generation
    is off (data.metric=none), not a crash after training; config.yaml records what ran."""
    data = tmp_path / "raw.jsonl"
    data.write_text("".join(json.dumps({"text": f"word {i} and more words"}) + "\n" for i in range(60)))
    proc = run_inprocess(tmp_path, *RUN, "model.variant=base", "data=jsonl", f"data.path={data}", *column)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "exact_match" not in metrics and metrics["steps"] == 2
    assert "metric: none" in (run_dir / "config.yaml").read_text()
