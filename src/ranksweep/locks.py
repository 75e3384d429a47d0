"""A short exclusive lock per study, so that workers claim trials one at a time.

Workers plan and create their next trials inside this lock, which makes
"no (ladder, rank, seed) runs twice" hold on every shared storage:

- SQLite and JournalFileStorage: ``fcntl.flock`` on ``<file>.ranksweep-lock`` beside the storage
  file (not ``<file>.lock``: that is JournalFileStorage's own lock file);
- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) keyed by the study name;
- MySQL: ``GET_LOCK``.

The lock is held for milliseconds (reading trials, creating a few), never while training.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ranksweep.urls import storage_file

log = logging.getLogger("ranksweep.sweep")
_ENGINES: dict[str, Any] = {}


def _key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold the study's claim lock for the ``with`` block."""
    path = storage_file(url)
    if path is not None:
        lock = path.with_name(path.name + ".ranksweep-lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if url.startswith(("postgresql", "mysql")):
        from sqlalchemy import create_engine, text

        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = create_engine(url, pool_pre_ping=True, pool_size=1)
        with engine.connect() as conn:
            if url.startswith("postgresql"):
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(study_name)})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(study_name)})
            else:
                conn.execute(text("SELECT GET_LOCK(:k, 600)"), {"k": f"ranksweep:{study_name}"[:64]})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"ranksweep:{study_name}"[:64]})
        return
    log.warning("no cross-worker lock for storage %s: run one worker per study", url.split("://")[0])
    yield
