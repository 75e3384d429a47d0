"""Writing files so that a reader never sees half of one: the one atomic-write helper.

Everything ranksweep writes that another process may read while it is written (summaries,
metrics, reports, converted models, tokenised caches) goes to a temporary name in the same
folder first and is moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_write_json", "atomic_write_text", "jsonable"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` (creating its folder) through a temp file and ``os.replace``.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask),
    not mkstemp's 0600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def jsonable(obj: Any) -> Any:
    """Plain JSON types: non-finite floats become ``None``, numpy scalars and paths their values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy / torch scalars
        return jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as indented JSON with sorted keys (reruns diff cleanly), NaN written as null."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_dir(target: str | os.PathLike[str], build: Callable[[Path], Any]) -> Path:
    """Build a folder in a temp dir beside ``target`` and move it into place, unless it exists.

    When another process wins the race, its folder is kept and ours is dropped.
    """
    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:32]}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process made it first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
