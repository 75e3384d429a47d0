"""A short exclusive lock per study, so that workers claim trials one at a time.

Workers plan and create their next trials inside this lock, which makes
"no (ladder, rank, seed) runs twice" hold on every shared storage:

- SQLite and journal files: a ``filelock.FileLock`` on ``<file>.ranksweep-lock`` beside the storage
  file (not ``<file>.lock``: that is Optuna's JournalFileBackend's own lock);
- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) keyed by the study name;
- MySQL / MariaDB: ``GET_LOCK``, whose result is checked: 1 is the lock, 0 a timeout, NULL an error.

The lock is held for milliseconds (reading trials, creating a few), never while training, so
waiting ``timeout_s`` (10 minutes) for it means something is wrong: that ends with a one-line
:class:`~ranksweep.errors.RanksweepError`, never with a claim made without the lock.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ranksweep.errors import RanksweepError
from ranksweep.urls import mask_secrets, storage_file

log = logging.getLogger("ranksweep.sweep")
_ENGINES: dict[str, Any] = {}
LOCK_TIMEOUT_S = 600.0


class LockTimeout(RanksweepError):
    """The study's claim lock was not obtained in time (not the user's input: exit code 1)."""

    exit_code = 1


def _key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


def mysql_lock_name(study_name: str) -> str:
    """The ``GET_LOCK`` name of a study (MySQL allows 64 characters)."""
    return f"ranksweep:{study_name}"[:64]


def check_get_lock(result: Any, name: str, timeout_s: float) -> None:
    """Raise unless ``GET_LOCK``'s result says the lock is held: 1 is the lock, 0 a timeout (another
    session holds it), NULL an error (out of memory, the thread killed)."""
    if result is not None and int(result) == 1:
        return
    why = (f"another worker held it for {timeout_s:g} s" if result is not None
           else "the server returned NULL (an error, or the session was killed)")
    raise LockTimeout(f"cannot take the study lock GET_LOCK('{name}'): {why}; no trial was claimed "
                      "(a stuck worker? SELECT IS_USED_LOCK(...) shows who holds it)")


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    engine = _ENGINES.get(url)
    if engine is None:
        from ranksweep.extras import require_storage_driver

        require_storage_driver(url)
        engine = _ENGINES[url] = create_engine(url, pool_pre_ping=True, pool_size=1)
    return engine


@contextmanager
def _file_lock(path: Any, timeout_s: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = path.with_name(path.name + ".ranksweep-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        held = FileLock(str(lock), timeout=timeout_s)
        held.acquire()
    except Timeout as exc:
        raise LockTimeout(f"cannot take the study lock {lock} within {timeout_s:g} s (a stuck worker, or a "
                          "filesystem without working locks); no trial was claimed") from exc
    try:
        yield
    finally:
        held.release()


@contextmanager
def study_lock(url: str, study_name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the study's claim lock for the ``with`` block; :class:`LockTimeout` after ``timeout_s``."""
    path = storage_file(url)
    if path is not None:
        with _file_lock(path, timeout_s):
            yield
        return
    if url.startswith(("postgresql", "mysql")):
        from sqlalchemy import text

        with _engine(url).connect() as conn:
            if url.startswith("postgresql"):
                conn.execute(text("SELECT set_config('lock_timeout', :t, false)"), {"t": f"{int(timeout_s * 1000)}"})
                try:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(study_name)})
                except Exception as exc:  # lock_timeout: "canceling statement due to lock timeout"
                    if "lock timeout" not in str(exc).lower():
                        raise
                    raise LockTimeout(f"cannot take the study lock pg_advisory_lock on {mask_secrets(url)} "
                                      f"within {timeout_s:g} s; no trial was claimed") from None
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(study_name)})
            else:
                name = mysql_lock_name(study_name)
                got = conn.execute(text("SELECT GET_LOCK(:k, :t)"), {"k": name, "t": timeout_s}).scalar()
                check_get_lock(got, name, timeout_s)
                try:
                    yield
                finally:
                    conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": name})
        return
    log.warning("no cross-worker lock for storage %s: run one worker per study", url.split("://")[0])
    yield
