"""A running job's liveness: a worker that stops beating has its trial failed and run again.

RDB storages (SQLite, PostgreSQL, MySQL) use Optuna's own heartbeat thread and
``fail_stale_trials``. Optuna's journal storage has no heartbeat, so there the worker beats a
``heartbeat_at`` user attribute and :func:`fail_stale` reads it.

Both skip a RUNNING trial that never beat, so a trial beats once as it is created
(:func:`first_beat`), before anything names its job: a worker killed between claiming a job and
launching it leaves a trial that goes stale like any other, not one every later worker waits on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from ranksweep.sweep import keys

log = logging.getLogger("ranksweep.sweep")


class Beat(Protocol):
    def start(self) -> None: ...

    def join(self) -> None: ...


class AttrHeartbeat:
    """A heartbeat for storages without Optuna's (JournalStorage): a timestamp user attribute."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.storage.set_trial_user_attr(self.trial_id, keys.HEARTBEAT_AT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # another worker declared this one dead; recording the job says so
            if self.stop.wait(self.interval):
                return

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join()


def is_rdb(storage: Any) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage)


def heartbeat(storage: Any, trial_id: int, interval: float) -> Beat:
    """The heartbeat for one job's trial (not started)."""
    if is_rdb(storage):
        from optuna.storages._heartbeat import get_heartbeat_thread

        return get_heartbeat_thread(trial_id, storage)
    return AttrHeartbeat(storage, trial_id, interval)


def first_beat(storage: Any, trial_id: int) -> None:
    """The heartbeat a trial gets as it is created, before its launch starts the regular beat."""
    if is_rdb(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_user_attr(trial_id, keys.HEARTBEAT_AT, time.time())


def fail_stale(study: optuna.Study, storage: Any, grace: float) -> None:
    """Mark the trials of workers that stopped beating FAIL (without ``failure_kind``: run again), each
    with a ``fail_reason`` naming the worker, on every storage."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if is_rdb(storage):
        from optuna.storages._heartbeat import is_heartbeat_enabled

        if not is_heartbeat_enabled(storage):
            return
        # The test optuna.storages.fail_stale_trials applies (the storage's grace period, the database's
        # clock); that function sets FAIL without a reason, and a finished trial takes no attribute.
        stale = set(storage._get_stale_trial_ids(study._study_id))
    else:
        stale = {t._trial_id for t in running
                 if t.user_attrs.get(keys.HEARTBEAT_AT) is not None
                 and time.time() - float(t.user_attrs[keys.HEARTBEAT_AT]) > grace}
    for t in running:
        if t._trial_id not in stale:
            continue
        try:
            storage.set_trial_user_attr(
                t._trial_id, keys.FAIL_REASON, f"worker {t.user_attrs.get(keys.WORKER)} stopped (no heartbeat)")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker finished it meanwhile (alive after all), or another worker failed it
        log.warning("trial %d: its worker stopped beating; it will run again", t.number)
