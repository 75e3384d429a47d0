"""Nothing lost: ranksweep deletes or overwrites only what it wrote itself, and recognises a storage before
writing to it.

One tiny sweep runs first in a temp working folder that also holds a user's files (a notes folder, a text
file, a page, a "home" folder, a journal-looking text file). Then every case runs the command and must end in
one line, exit code 2, no traceback, and leave the sha256 of EVERY file under the working folder unchanged,
outside ``outputs/`` too, with no new file where the case points. The classes: export and report outputs,
storages that are not Optuna's, run / sweep / checkpoint folders, exit codes of bad paths. Then what
ranksweep may do: replace its own export whole, and survive being killed midway (a real process, killed).

The command runs in this process, through its own entry points (:func:`helpers.run.run_inprocess`), with
the environment a child would get (the working folder's model cache, its "home" folder); the real installed
command's one line and exit codes are ``test_bad_input.py``'s subprocess cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import SHRUNK_RUN, SHRUNK_SWEEP
from helpers.run import BIN, Result, env, run_inprocess

STUDY = "own"
RUN = SHRUNK_RUN  # 2 steps of trainer=tiny
SWEEP = (*SHRUNK_SWEEP, "trainer=tiny", "trainer.max_steps=2")  # r = 8
SWEEP_DIR = f"outputs/sweeps/{STUDY}"
TRIAL = f"{SWEEP_DIR}/trial-0001-r8-s0"


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _env(cwd: Path) -> dict[str, str]:
    """What :func:`helpers.run.env` gives a child, for this working folder: its own cache and "home"."""
    return {"RANKSWEEP_CACHE": str(cwd / "cache"), "HOME": str(cwd / "home"), "WANDB_MODE": "offline"}


def _run(cwd: Path, *args: str, **extra: str) -> Result:
    """``ranksweep ARGS`` in ``cwd``, in this process (the environment a child would get, ``extra`` on top)."""
    return run_inprocess(cwd, *args, **{**_env(cwd), **extra})


def _user_files(w: Path) -> None:
    (w / "home").mkdir()
    (w / "home" / ".bashrc").write_text("export PS1='$ '\n")
    (w / "notes").mkdir()
    (w / "notes" / "todo.txt").write_text("buy milk\n")
    (w / "notes.txt").write_text("my notes, one line without a newline")
    (w / "notes.log").write_text("a log line without a final newline")  # looks like a torn journal record
    (w / "data.log").write_text('{"level": "info", "msg": "a JSON log, not an Optuna journal"}\n')
    (w / "page.html").write_text("<!DOCTYPE html><html><head><title>mine</title></head></html>\n")
    (w / "folder.log").mkdir()
    (w / "folder.db").mkdir()
    (w / "run_mine").mkdir()
    (w / "run_mine" / "config.yaml").write_text("my: config\n")
    (w / "reports").mkdir()
    (w / f"reports/{STUDY}.html").write_text("my own page named like the report\n")


# id -> (arguments, what the line says, a path that must not appear). {w}: the working folder.
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # -- export --out: only a new, empty or own folder; never the storage, the sweep, cwd, home or above
    "export_user_folder": (("export", STUDY, "--out", "notes"), ("--out", "ranksweep did not write", "todo.txt"), ""),
    "export_sweep_folder": (("export", STUDY, "--out", SWEEP_DIR), ("--out", "sweep folder"), ""),
    "export_holds_storage": (("export", STUDY, "--out", "outputs"), ("--out", "holds the study's storage"), ""),
    "export_trial_folder": (("export", STUDY, "--out", TRIAL), ("--out", "ranksweep did not write"), ""),
    "export_cwd": (("export", STUDY, "--out", "."), ("--out", "the current folder"), ""),
    "export_parent": (("export", STUDY, "--out", ".."), ("--out", "a folder holding the current folder"), ""),
    "export_home": (("export", STUDY, "--out", "{w}/home"), ("--out", "your home folder"), ""),
    "export_root": (("export", STUDY, "--out", "/"), ("--out", "a folder holding"), ""),
    "export_file": (("export", STUDY, "--out", "notes.txt"), ("--out", "is a file, not a folder"), ""),
    "export_bad_repo_first": (("export", STUDY, "--out", "new_export", "--push-to-hub", "not a/repo id", "--dry-run"),
                              ("--push-to-hub", "not a repo id"), "new_export"),
    "export_bad_ladder_first": (("export", STUDY, "--out", "new_export2", "--ladder", "nope"),
                                ("--ladder 'nope'",), "new_export2"),
    # -- report --out: never the storage, never a file ranksweep did not write
    "report_over_storage": (("report", STUDY, "--out", "outputs/ranksweep.db"), ("--out", "study's storage"), ""),
    "report_over_text": (("report", STUDY, "--out", "notes.txt"), ("--out", "ranksweep did not write"), ""),
    "report_over_page": (("report", STUDY, "--out", "page.html"), ("--out", "ranksweep did not write"), ""),
    "report_into_folder": (("report", STUDY, "--out", "reports"), ("--out", f"{STUDY}.html", "did not write"), ""),
    # -- storages: recognised before anything is written
    "journal_text_file": ((*SWEEP, "hydra.sweeper.storage=notes.log", "hydra.sweeper.study_name=j1"),
                          ("hydra.sweeper.storage", "not an Optuna journal"), "outputs/sweeps/j1"),
    "journal_json_log": ((*SWEEP, "hydra.sweeper.storage=journal://{w}/data.log", "hydra.sweeper.study_name=j2"),
                         ("not an Optuna journal",), "outputs/sweeps/j2"),
    "journal_folder": ((*SWEEP, "hydra.sweeper.storage=folder.log", "hydra.sweeper.study_name=j3"),
                       ("is a folder",), "outputs/sweeps/j3"),
    "sqlite_text_file": ((*SWEEP, "hydra.sweeper.storage=sqlite:///notes.txt", "hydra.sweeper.study_name=j4"),
                         ("not an SQLite database",), "outputs/sweeps/j4"),
    "sqlite_folder": ((*SWEEP, "hydra.sweeper.storage=sqlite:///folder.db", "hydra.sweeper.study_name=j5"),
                      ("is a folder",), "outputs/sweeps/j5"),
    "report_on_text_journal": (("report", STUDY, "--storage", "notes.log"), ("not an Optuna journal",), ""),
    "dashboard_on_json_log": (("dashboard", "--storage", "data.log"), ("not an Optuna journal",), ""),
    # -- run, sweep and checkpoint folders
    "run_dir_user_folder": ((*RUN, "hydra.run.dir=run_mine"), ("hydra.run.dir", "ranksweep did not write"), ""),
    "output_dir_user_folder": ((*RUN, "output_dir=run_mine"), ("output_dir", "config.yaml", "did not write"), ""),
    "run_dir_cwd": ((*RUN, "hydra.run.dir=."), ("hydra.run.dir", "the current folder"), ".hydra"),
    "run_dir_home": ((*RUN, "hydra.run.dir={w}/home"), ("hydra.run.dir", "your home folder"), "home/.hydra"),
    "checkpoint_dir_user": ((*RUN, "trainer.save_every=1", "trial.checkpoint_dir=notes"),
                            ("trial.checkpoint_dir", "ranksweep did not write"), ""),
    "sweep_dir_user_folder": ((*SWEEP, "hydra.sweep.dir=notes", "hydra.sweeper.study_name=j6"),
                              ("hydra.sweep.dir", "ranksweep did not write"), ""),
    "sweep_dir_cwd": ((*SWEEP, "hydra.sweep.dir=.", "hydra.sweeper.study_name=j7"),
                      ("hydra.sweep.dir", "the current folder"), "trial-0000-base"),
    # -- a bad path is exit 2 on every command
    "output_dir_under_file": ((*RUN, "output_dir=notes.txt/out"), ("output_dir: cannot create", "Not a directory"), ""),
    "logger_dir_under_file": ((*RUN, "logger=wandb", "logger.dir=notes.txt/w"), ("logger.dir: cannot create",), ""),
    "cache_under_file": ((*RUN,), ("cache_dir", "cannot create"), ""),
}
ENV = {"cache_under_file": {"RANKSWEEP_CACHE": "{w}/notes.txt/cache"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("own")
    _user_files(w)
    proc = _run(w, *SWEEP, f"hydra.sweeper.study_name={STUDY}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = checksums(w)

    def case(name: str) -> Result:
        args = [a.replace("{w}", str(w)) for a in CASES[name][0]]
        extra = {k: v.replace("{w}", str(w)) for k, v in ENV.get(name, {}).items()}
        return _run(w, *args, **extra)

    results = {name: case(name) for name in CASES}  # one at a time: they share this process
    return {"w": w, "before": before, "results": results}


def test_the_catalogue_has_three_cases_of_each_class_beyond_the_reported_ones():
    assert sum(c.startswith("export_") for c in CASES) >= 3 + 3
    assert sum(c.startswith("report_") for c in CASES) >= 1 + 3
    assert sum(c.startswith(("journal_", "sqlite_", "report_on", "dashboard_on")) for c in CASES) >= 1 + 3


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_and_nothing_changed(world, case):
    w, proc = world["w"], world["results"][case]
    _, needles, absent = CASES[case]
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error: "), proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, lines[0])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if absent:
        assert not (w / absent).exists(), absent


def test_no_saved_file_changed_or_was_added_where_refused(world):
    w, before = world["w"], world["before"]
    after = checksums(w)
    assert {p: after.get(p) for p in before} == before
    added = [p for p in after if p not in before]
    # A refused single run may leave Hydra's own run folder under outputs/runs/ (its .hydra and log), nothing else.
    assert [p for p in added if not p.startswith("outputs/runs/")] == [], added
    assert not [p for p in added if not ("/.hydra/" in p or p.endswith(".log"))], added
    assert not (w / "notes" / f"{STUDY}.html").exists() and not (w / "notes" / "checkpoint-1").exists()


# ----------------------------------------------------------------------------- what ranksweep may replace


def _export(w: Path, out: str, *extra: str, **env_extra: str) -> Result:
    return _run(w, "export", STUDY, "--out", out, *extra, **env_extra)


def test_export_twice_into_its_own_folder_replaces_it_whole(world):
    w = world["w"]
    first = _export(w, "exported")
    assert first.returncode == 0, first.stderr[-2000:]
    marker = json.loads((w / "exported" / ".ranksweep-export.json").read_text())
    assert marker["written_by"] == "ranksweep" and marker["study"] == STUDY
    (w / "exported" / "stray.txt").write_text("added to ranksweep's export afterwards")
    second = _export(w, "exported")
    assert second.returncode == 0, second.stderr[-2000:]
    names = sorted(p.name for p in (w / "exported").iterdir())
    assert "stray.txt" not in names and "adapter_model.safetensors" in names and ".ranksweep-export.json" in names
    trial = w / TRIAL / "adapter" / "adapter_model.safetensors"
    assert (w / "exported" / "adapter_model.safetensors").read_bytes() == trial.read_bytes()
    assert not [p for p in w.iterdir() if "ranksweep-tmp" in p.name]


def _complete(folder: Path, trial: Path) -> bool:
    try:
        card = (folder / "README.md").read_text()
        json.loads((folder / ".ranksweep-export.json").read_text())
        return ((folder / "adapter_model.safetensors").read_bytes() == trial.read_bytes()
                and "(ranksweep)" in card and (folder / "rank_curve.png").is_file())
    except (OSError, ValueError):
        return False


@pytest.mark.parametrize("point", ["built", "swapped", "early", "late"])
def test_an_export_killed_midway_leaves_the_old_or_the_new_one(world, point):
    """Killed after building the new folder beside the old (``built``), after the atomic swap but before the
    old copy is removed (``swapped``), or at a time (``early``: while importing; ``late``: while writing)."""
    w = world["w"]
    out = f"killed-{point}"
    assert _export(w, out).returncode == 0
    (w / out / "old.txt").write_text("marks the old export")
    old = checksums(w / out)
    trial = w / TRIAL / "adapter" / "adapter_model.safetensors"
    extra = {"RANKSWEEP_PAUSE_AT": point} if point in ("built", "swapped") else {}
    proc = subprocess.Popen([BIN, "export", STUDY, "--out", out], cwd=w, env=env(w / "cache", HOME=str(w / "home"),
                            **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    if extra:
        while not (w / f"RANKSWEEP_PAUSE_AT.{point}").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (w / f"RANKSWEEP_PAUSE_AT.{point}").exists(), proc.communicate()[1][-2000:]
        (w / f"RANKSWEEP_PAUSE_AT.{point}").unlink()
    else:
        time.sleep(1.0 if point == "early" else 3.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    now = checksums(w / out)
    if point == "built":
        assert now == old  # the new one was never swapped in
    elif point == "swapped":
        assert "old.txt" not in now and _complete(w / out, trial)
    else:
        assert now == old or ("old.txt" not in now and _complete(w / out, trial))
    # The next export removes what the killed one left beside the folder, and replaces the folder.
    again = _export(w, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _complete(w / out, trial) and not (w / out / "old.txt").exists()
    assert not [p.name for p in w.iterdir() if p.name.startswith(f".{out}")]


def test_best_folder_the_user_made_is_left_alone(world, tmp_path):
    """A ``best/`` that ranksweep did not write, in a sweep folder: the sweep's end leaves it as it is."""
    from types import SimpleNamespace

    from ranksweep import export
    from ranksweep.report.load import load_study_data

    w = world["w"]
    sweep = tmp_path / "sweep"
    (sweep / "best").mkdir(parents=True)
    (sweep / "best" / "mine.txt").write_text("the user's\n")
    cwd = os.getcwd()
    os.chdir(w)
    try:
        data = load_study_data(STUDY, "sqlite:///outputs/ranksweep.db")
    finally:
        os.chdir(cwd)
    s = SimpleNamespace(study_name=STUDY, storage_url="sqlite:///x.db")
    assert export.write_best(sweep, data.ladders, s) is None
    assert sorted(p.name for p in (sweep / "best").iterdir()) == ["mine.txt"]


def test_a_torn_tail_after_a_good_record_is_still_repaired(tmp_path):
    """The one repair that stays: a journal whose last append was cut after complete records."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from ranksweep.storage import open_storage

    path = tmp_path / "study.log"
    optuna.create_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(path))))
    good = path.read_bytes()
    path.write_bytes(good + b'{"op_code": 4, "worker_id": "x", "stu')
    storage = open_storage(str(path))
    study = optuna.load_study(study_name="t", storage=storage)
    study.tell(study.ask(), 1.0)
    text = path.read_bytes()
    assert text.startswith(good) and b'"stu{' not in text and text.endswith(b"\n")
    reread = JournalStorage(JournalFileBackend(str(path)))
    assert len(optuna.load_study(study_name="t", storage=reread).trials) == 1
