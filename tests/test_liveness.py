"""A worker that dies at the wrong moment must not stall or damage the study for the others.

- The lock around each journal append is a kernel lock: a holder killed while holding it frees it at
  once (Optuna's lock file would stall every worker for 30 s, then let them all break it together).
- A torn last record (its writer died, or the disk filled, mid-append) is dropped by the next append,
  not buried under it (after which Optuna refuses the whole file).
- A trial beats as it is created: a worker killed between claiming a job and launching it leaves a
  trial that goes stale, instead of one every later worker waits on forever.

Real journal files and SQLite databases, real processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ranksweep.journal_lock import SUFFIX, JournalLock
from ranksweep.storage import check_journal, open_storage
from ranksweep.sweep.heartbeat import fail_stale, first_beat

optuna.logging.set_verbosity(optuna.logging.WARNING)

HOLD_AND_DIE = """
import os, signal, sys
from ranksweep.storage import open_storage
storage = open_storage("journal://" + sys.argv[1])
storage._backend._lock.acquire()  # as in the middle of an append
print("held", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_lock_holder_frees_the_journal_at_once(tmp_path):
    path = tmp_path / "study.log"
    optuna.create_study(study_name="s", storage=open_storage(f"journal://{path}"))
    proc = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL and "held" in proc.stdout, proc.stderr[-2000:]
    assert Path(str(path) + SUFFIX).exists()  # the lock's file stays; the kernel freed the lock itself
    lock = JournalLock(str(path))
    lock._lock.acquire(timeout=0)  # free now: no grace period to wait out
    lock.release()
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal://{path}"))
    study.tell(study.ask(), 1.0)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def _torn(path: Path) -> bytes:
    """A journal with one finished trial, then half of a record (its writer died mid-append)."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal://{path}"))
    study.tell(study.ask(), 1.0)
    torn = b'{"op_code": 4, "worker_id": "dead", "trial_id": 0, "user_attr": {"eval_lo'
    with open(path, "ab") as fh:
        fh.write(torn)
    return torn


def test_the_next_append_drops_a_torn_last_record(tmp_path):
    path = tmp_path / "study.log"
    torn = _torn(path)
    check_journal(path, "hydra.sweeper.storage")  # a torn last line is not damage: no error
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal://{path}"))
    study.tell(study.ask(), 2.0)
    text = path.read_bytes()
    assert torn not in text and text.endswith(b"\n")
    assert all(isinstance(json.loads(line), dict) for line in text.splitlines())
    fresh = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))  # Optuna's own reader agrees
    assert [t.value for t in fresh.get_trials()] == [1.0, 2.0]


def test_without_the_lock_optuna_buries_a_torn_record(tmp_path):
    """Why the lock drops the torn record: Optuna's own backend glues the next record to it (that record
    is lost), and from the append after that on, the file cannot be read at all."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = tmp_path / "study.log"
    _torn(path)
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    with pytest.raises(AttributeError):  # its trial's record landed on the torn line: never read back
        study.ask()
    with pytest.raises(ValueError, match="delimiter"):
        study.ask()
    with pytest.raises(ValueError, match="delimiter"):
        optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_claimed_by_a_dead_worker_goes_stale(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'r.db'}" if kind == "sqlite" else f"journal://{tmp_path / 'r.log'}"
    storage = open_storage(url, heartbeat=(1, 2))
    study = optuna.create_study(study_name="s", storage=storage)
    claimed = study.ask()  # as a claim makes it: a first beat, then the attributes that name the job
    first_beat(storage, claimed._trial_id)
    claimed.set_user_attr("ladder", "default")
    claimed.set_user_attr("worker", "n1:42")
    silent = study.ask()  # without a first beat (as before): never stale, so every worker would wait on it
    silent.set_user_attr("ladder", "default")
    time.sleep(3.5)  # past the grace period (SQLite's clock counts whole seconds); the worker never launched
    fail_stale(study, storage, 2)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {claimed.number: TrialState.FAIL, silent.number: TrialState.RUNNING}
    assert study.get_trials()[claimed.number].user_attrs["fail_reason"] == "worker n1:42 stopped (no heartbeat)"
