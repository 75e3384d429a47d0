"""Storage URLs: the files behind them and secrets kept out of what is shown or written.

- ``sqlite:///path/to/file.db`` -> the SQLite file;
- ``journal:///path/to/study.log`` (or a plain ``*.log`` / ``*.journal`` path) -> Optuna's journal file;
- ``postgresql://user:password@host/db`` -> no file; the password is masked in anything shown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

__all__ = ["journal_path", "mask_secrets", "sqlite_path", "storage_file", "storage_root"]

# Whole words of a key only: hf_token, api_key, password; not max_new_tokens or tokenizer.
_SECRET_KEY = re.compile(r"(?:^|[_.-])(token|password|passwd|secret|api_key|apikey)(?:$|[_.-])", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(//[^:/@\s]+:)[^@\s]+@")


def mask_secrets(value: Any) -> Any:
    """Mask secret-looking keys and passwords inside URLs, recursively (dicts, lists, strings)."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v else mask_secrets(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value)
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def sqlite_path(url: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` URL (relative to the working directory), else None."""
    url = str(url)
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):]
    return Path(rest) if rest and rest != ":memory:" else None


def journal_path(url: str) -> Optional[Path]:
    """The file of a ``journal://`` URL, else None."""
    url = str(url)
    if not url.startswith("journal://"):
        return None
    rest = url[len("journal://"):]
    return Path(rest).expanduser() if rest else None


def storage_file(url: str) -> Optional[Path]:
    """The local file behind a storage URL (SQLite or journal), else None (a database server)."""
    return sqlite_path(url) or journal_path(url)


def storage_root(url: str) -> Optional[Path]:
    """Where a sweep with this storage ran: the folder holding ``outputs/`` for the default layout."""
    db = storage_file(url)
    if db is None:
        return None
    db = db.resolve()
    return db.parent.parent if db.parent.name == "outputs" else db.parent
