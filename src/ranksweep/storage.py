"""Opening an Optuna storage from a URL, with one-line errors.

- ``sqlite:///outputs/ranksweep.db`` (the default; one machine, one worker at a time),
- ``postgresql://user:pass@host/db`` (many workers; psycopg 3),
- ``journal:///shared/fs/study.log`` (Optuna's JournalFileStorage, for a shared filesystem).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import ConfigError
from ranksweep.sweep.settings import DEFAULT_STORAGE_URL
from ranksweep.urls import journal_path, mask_secrets, sqlite_path

__all__ = ["DEFAULT_STORAGE_URL", "check_optuna_sqlite", "open_storage"]


def open_storage(url: str, heartbeat: Optional[tuple[float, float]] = None,
                 key: str = "hydra.sweeper.storage") -> Any:
    """An Optuna storage for ``url``. ``heartbeat=(interval_s, grace_s)`` gives RDB storages Optuna's
    heartbeat, so that a killed worker's trial is failed and run again."""
    import optuna  # here, not at import: light commands read this module too

    url = str(url)
    try:
        journal = journal_path(url)
        if journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            journal.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(journal)))
        db = sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            if db.exists() and db.stat().st_size > 0:
                check_optuna_sqlite(db, key)
        elif "://" not in url:
            raise ConfigError(f"{key}: not a storage URL: {url!r} (e.g. sqlite:///outputs/ranksweep.db)")
        kwargs: dict[str, Any] = {}
        if heartbeat:
            # A trial whose worker stopped beating is marked FAIL by fail_stale_trials; the
            # sweeper then runs its (ladder, rank, seed) again as a new trial.
            kwargs = dict(heartbeat_interval=int(heartbeat[0]), grace_period=int(heartbeat[1]))
        engine: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine["connect_args"] = {"connect_timeout": 10}
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
            except Exception as exc:
                # Workers starting together race to create Optuna's tables ("already exists",
                # duplicate key): the loser finds them made on its next try.
                text = str(exc).lower()
                if attempt == 4 or not ("already exists" in text or "duplicate" in text or "unique" in text):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ConfigError:
        raise
    except Exception as exc:  # sqlalchemy / psycopg errors: unreachable host, bad credentials, corrupt file
        first = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{key}: cannot open {mask_secrets(url)}: {first}") from exc


def check_optuna_sqlite(path: Path, key: str) -> None:
    """Refuse an SQLite file that is not an Optuna storage (read-only check): Optuna would add its
    tables to any SQLite file it opens, a user's own database included."""
    import sqlite3

    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise ConfigError(f"{key}: {path} is not an SQLite database")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{key}: cannot read {path}: {' '.join(str(exc).split())[:200]}") from exc
    if tables and not {"studies", "trials", "version_info"} <= tables:
        raise ConfigError(f"{key}: {path} is an SQLite database but not an Optuna storage; "
                          "point the storage at a new file")
