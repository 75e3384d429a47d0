"""Opening an Optuna storage from a URL, with one-line errors.

- ``sqlite:///outputs/ranksweep.db`` (the default; one machine, one worker at a time),
- ``postgresql://user:pass@host/db`` (many workers; psycopg 3),
- ``journal:///shared/fs/study.log`` (Optuna's JournalFileStorage, for a shared filesystem).

A damaged storage is never written to: an existing SQLite file must pass SQLite's ``quick_check`` and
a journal file must parse line by line before Optuna opens it, and :func:`check_readable` reads the
study before the sweeper writes to it; each failure is one line that says how to recover.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import ConfigError, StorageDamaged
from ranksweep.journal_lock import RECORD_START
from ranksweep.urls import journal_path, mask_secrets, reveal, sqlite_path

__all__ = ["check_journal", "check_optuna_sqlite", "check_readable", "check_storage_file",
           "open_storage"]


def open_storage(url: str, heartbeat: Optional[tuple[float, float]] = None,
                 key: str = "hydra.sweeper.storage") -> Any:
    """An Optuna storage for ``url``. ``heartbeat=(interval_s, grace_s)`` gives RDB storages Optuna's
    heartbeat, so that a killed worker's trial is failed and run again."""
    import optuna  # here, not at import: light commands read this module too

    url = reveal(str(url))  # a password masked on the command line (ranksweep.urls.conceal)
    try:
        check_storage_file(url, key)  # before Optuna (or our torn-tail repair) may write to it
        journal = journal_path(url)
        if journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            from ranksweep.journal_lock import JournalLock

            journal.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalLock(str(journal))))
        db = sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif "://" not in url:
            raise ConfigError(f"{key}: not a storage URL: {url!r} (e.g. sqlite:///outputs/ranksweep.db)")
        else:
            from ranksweep.extras import require_storage_driver

            require_storage_driver(url, key)  # psycopg / PyMySQL: one line naming the extra
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
    except (ConfigError, StorageDamaged):
        raise
    except Exception as exc:  # sqlalchemy / psycopg errors: unreachable host, bad credentials, corrupt file
        first = mask_secrets(" ".join(str(exc).split())[:300])
        raise ConfigError(f"{key}: cannot open {mask_secrets(url)}: {first}") from exc


def check_storage_file(url: str, key: str = "hydra.sweeper.storage") -> None:
    """Read-only: an existing file behind ``url`` must be an Optuna SQLite database or journal (an empty file
    is a new one); anything else is refused, its bytes unchanged. Called before anything is written."""
    journal, db = journal_path(url), sqlite_path(url)
    for path, check in ((journal, check_journal), (db, check_optuna_sqlite)):
        if path is not None and path.exists() and (not path.is_file() or path.stat().st_size > 0):
            check(path, key)


def check_optuna_sqlite(path: Path, key: str) -> None:
    """Refuse an SQLite file that is not an Optuna storage (read-only check): Optuna would add its
    tables to any SQLite file it opens, a user's own database included. Refuse a damaged one too
    (SQLite's ``quick_check``), before anything writes to it."""
    import sqlite3

    if not path.is_file():
        raise ConfigError(f"{key}: {path} is {'a folder' if path.is_dir() else 'not a regular file'}, not an SQLite "
                          "database; point the storage at a new file")
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise ConfigError(f"{key}: {path} is not an SQLite database (it was left as it is); point the storage "
                              "at a new file")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StorageDamaged(f"{key}: {path} is damaged or unreadable (SQLite: {' '.join(str(exc).split())[:200]}); "
                             f"it was not written to. {_sqlite_recovery(path)}") from exc
    if problems != ["ok"]:
        raise StorageDamaged(f"{key}: {path} is damaged (SQLite integrity check: {'; '.join(problems)[:200]}); "
                             f"it was not written to. {_sqlite_recovery(path)}")
    if tables and not {"studies", "trials", "version_info"} <= tables:
        raise ConfigError(f"{key}: {path} is an SQLite database but not an Optuna storage; "
                          "point the storage at a new file")


def _sqlite_recovery(path: Path) -> str:
    hot = path.with_name(path.name + "-journal")
    if hot.exists():
        return (f"A crashed writer left {hot.name}: `sqlite3 {path} 'PRAGMA integrity_check'` rolls it back; "
                "else restore a backup")
    return (f"Recover what is readable with `sqlite3 {path} .recover | sqlite3 {path}.recovered` and point the "
            "storage at the new file, or restore a backup")


def check_journal(path: Path, key: str) -> None:
    """Refuse, read-only, a file that is not an Optuna journal (its first line must be a complete journal
    record: a user's text file is never taken for a journal with a torn tail and cut), and one Optuna could
    not replay. A last line without its newline after a good record is not damage: an append in progress,
    or one whose writer died (the next append drops it, :mod:`ranksweep.journal_lock`)."""
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is {'a folder' if path.is_dir() else 'not a regular file'}, not an "
                          "Optuna journal; point the storage at a new file")
    number = _journal_damage(path)
    if number == 1:
        raise ConfigError(f"{key}: {path} is not an Optuna journal (its first line is not a complete journal "
                          "record); it was left as it is: point the storage at a new file")
    if number is not None:
        raise StorageDamaged(
            f"{key}: journal file {path} is damaged at line {number} (not a complete JSON record); it was not "
            f"written to. Keep the records before it (`head -n {number - 1} {path} > {path}.fixed`) and point "
            "the storage at the new file, or restore a backup")


def _journal_damage(path: Path) -> Optional[int]:
    """The line number of the first line that is not a complete journal record, else None. A torn last line
    (no newline) is not counted once a complete record precedes it; the first line must be complete."""
    import json

    with open(path, "rb") as fh:
        lines = fh.readlines()
    if lines and not lines[-1].endswith(b"\n") and (len(lines) > 1 or lines[-1].startswith(RECORD_START)):
        lines.pop()  # torn: after a good record, or Optuna's very first append (its own opening bytes)
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            return number
    return None


def check_readable(storage: Any, study_name: str, url: str, key: str = "hydra.sweeper.storage") -> None:
    """Read the storage's studies and ``study_name``'s trials before anything is written to it."""
    try:
        studies = {s.study_name: s._study_id for s in storage.get_all_studies()}
        if study_name in studies:
            storage.get_all_trials(studies[study_name], deepcopy=False)
    except Exception as exc:  # StorageInternalError, a malformed database image, a bad JSON value
        first = " ".join(str(exc).split())[:200]
        db = sqlite_path(url) or journal_path(url)
        how = _sqlite_recovery(db) if sqlite_path(url) else (
            "restore the journal file from a backup" if db is not None else "check the database server's logs, "
            "or restore a backup")
        raise StorageDamaged(f"{key}: cannot read {mask_secrets(url)} ({type(exc).__name__}: {first}); it was "
                             f"not written to. {how}") from exc
