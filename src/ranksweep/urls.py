"""Storage URLs: the files behind them and secrets kept out of what is shown or written.

- ``sqlite:///path/to/file.db`` -> the SQLite file;
- ``journal:///path/to/study.log`` (or a plain ``*.log`` / ``*.journal`` path) -> Optuna's journal file;
- ``postgresql://user:password@host/db`` -> no file; the password is masked in anything shown.

Secrets: :func:`mask_secrets` is the one masking helper (passwords in URLs, ``password=`` query
parameters, values of secret-looking keys and ``key=value`` overrides, and the values of
secret-looking environment variables such as ``WANDB_API_KEY`` or ``HF_TOKEN``). The command line
is masked before Hydra reads it (:func:`conceal`): Hydra, the sweeper and every file they write
see ``postgresql://user:***@host/db``; the real URL is kept in this process and in the environment
variable ``RANKSWEEP_SECRETS`` (which child jobs inherit), and :func:`reveal` gives it back where a
connection is opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

__all__ = ["conceal", "journal_path", "mask_secrets", "masked_argv", "reveal", "sqlite_path", "storage_file",
           "storage_root"]

# Whole words of a key only: hf_token, api_key, password; not max_new_tokens or tokenizer.
_SECRET_KEY = re.compile(r"(?:^|[_.-])(token|password|passwd|secret|api_key|apikey)(?:$|[_.-])", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(//[^:/@\s]+:)[^@\s]+@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd|token|api_key|secret)=)[^&\s'\"]+", re.IGNORECASE)
# `hydra.sweeper.storage=postgresql://u:pw@h/db` or `+logger.api_key=abc`: an override of a secret-looking key.
_OVERRIDE = re.compile(r"^([+~]{0,2}[\w./@-]+=)(.*)$", re.DOTALL)
# A URL with a password in it, as one token of a longer text (quotes, spaces, commas end it).
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][\w+.-]*://[^:/@\s'\",\[\]]+:[^@\s'\",\[\]]+@[^\s'\",\[\]]*")
# Environment variables whose values are secrets: a name component TOKEN, KEY, SECRET, PASSWORD...
_SECRET_ENV = re.compile(r"(?:^|_)(?:TOKEN|KEY|APIKEY|SECRET|PASSWORD|PASSWD|PGPASSWORD|CREDENTIALS?)(?:_|$)")
VAULT_ENV = "RANKSWEEP_SECRETS"
_VAULT: dict[str, str] = {}  # masked URL -> the real one, for this process


def _env_secrets() -> list[str]:
    """Values of secret-looking environment variables (8 characters or more), longest first."""
    found = {v for k, v in os.environ.items()
             if k != VAULT_ENV and len(v) >= 8 and _SECRET_ENV.search(k.upper())}
    return sorted(found, key=len, reverse=True)


def _mask_text(text: str, env: list[str]) -> str:
    for secret in env:
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    m = _OVERRIDE.match(text)
    if m and _SECRET_KEY.search(m.group(1)[:-1].lstrip("+~").rsplit(".", 1)[-1]) and m.group(2):
        text = m.group(1) + "***"
    return text


def mask_secrets(value: Any, _env: Optional[list[str]] = None) -> Any:
    """Mask secrets, recursively (dicts, lists, strings): passwords in URLs and query strings, values of
    secret-looking keys (``hf_token``, ``api_key``, ``password``) and of such ``key=value`` overrides, and
    the values of secret-looking environment variables (``WANDB_API_KEY``, ``HF_TOKEN``, ...)."""
    env = _env_secrets() if _env is None else _env
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v else mask_secrets(v, env)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v, env) for v in value)
    if isinstance(value, str):
        return _mask_text(value, env)
    return value


def _vault() -> dict[str, str]:
    try:
        inherited = json.loads(os.environ.get(VAULT_ENV) or "{}")
    except ValueError:
        inherited = {}
    return {**(inherited if isinstance(inherited, dict) else {}), **_VAULT}


def conceal(text: str) -> str:
    """``text`` with every URL password masked; each real URL is remembered (here and in ``$RANKSWEEP_SECRETS``,
    which child processes inherit) so that :func:`reveal` gives it back."""
    text = str(text)
    found = {m.group(0): mask_secrets(m.group(0), []) for m in _URL_WITH_PASSWORD.finditer(text)}
    found = {real: masked for real, masked in found.items() if masked != real}
    if not found:
        return text
    for real, masked in found.items():
        _VAULT[masked] = real
        text = text.replace(real, masked)
    os.environ[VAULT_ENV] = json.dumps(_vault())
    return text


def reveal(value: Any) -> Any:
    """The real value of what :func:`conceal` masked: a string, or every string field of a dataclass (in
    place). Used only where a connection is opened; anything shown or written keeps the masked form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, reveal(getattr(value, f.name)))
        return value
    if not isinstance(value, str) or "***" not in value:
        return value
    for masked, real in sorted(_vault().items(), key=lambda kv: len(kv[0]), reverse=True):
        value = value.replace(masked, real)
    return value


@contextmanager
def masked_argv() -> Iterator[None]:
    """``sys.argv`` with secrets masked for the ``with`` block (libraries that record the command line)."""
    import sys

    saved = list(sys.argv)
    sys.argv[:] = [saved[0], *mask_secrets(saved[1:])] if saved else saved
    try:
        yield
    finally:
        sys.argv[:] = saved


def sqlite_path(url: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` URL (relative to the working directory), else None."""
    url = str(url)
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):]
    return Path(rest) if rest and rest != ":memory:" else None


JOURNAL_SUFFIXES = (".log", ".journal")


def journal_path(url: str) -> Optional[Path]:
    """The file of a journal storage, else None.

    The plain path that ``optuna --storage`` and ``optuna-dashboard`` take (``outputs/study.log``,
    ``/shared/study.log``: no scheme, ending in ``.log`` or ``.journal``; relative to the working
    directory), or the alias ``journal:///path`` (``journal://`` + the path, absolute or relative).
    """
    url = str(url).strip()
    if url.startswith("journal://"):
        rest = url[len("journal://"):]
        return Path(rest).expanduser() if rest else None
    if url and "://" not in url and url.lower().endswith(JOURNAL_SUFFIXES):
        return Path(url).expanduser()
    return None


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
