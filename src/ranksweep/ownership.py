"""What ranksweep may delete or overwrite: only what it wrote itself.

Every folder ranksweep fills at a place the user names (an export, a sweep's ``best/``, a single run's
folder, a checkpoint folder, a sweep folder) carries a marker file that says ranksweep wrote it. A
command writes only into a place it creates, or into one that holds its marker:

- a non-empty folder without the marker is refused in one line naming the flag (exit 2);
- the current folder, the home folder and any folder holding either are refused as outputs, and so
  are the study's storage, its sweep folder, and any folder holding one of them (``protect``);
- a folder that is replaced (an export written again) is built beside it and swapped in with one
  atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it), so a crash leaves the
  old folder or the new one, never half of either; what a crash left beside it is removed next time;
- a file that is replaced (a report) must be one ranksweep wrote (``ours``), and is written through a
  temp file and ``os.replace`` (:mod:`ranksweep.files`).

The standard library and filelock have no notion of "a folder this program owns", hence this module.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import ConfigError

__all__ = ["EXPORT_MARKER", "RUN_MARKER", "check_output_dir", "check_output_file", "check_place", "is_ours",
           "replace_dir", "resolved", "write_marker"]

EXPORT_MARKER = ".ranksweep-export.json"  # an export folder, and a sweep's best/
RUN_MARKER = ".ranksweep-run.json"  # a single run's folder (hydra.run.dir, output_dir)
_TEMP = ".ranksweep-tmp-"  # a folder being built beside its target, or an old one being removed


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, absolute, symlinks resolved (what is really written)."""
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_place(path: str | os.PathLike[str], flag: str, protect: Iterable[Optional[Path]] = ()) -> Path:
    """``path`` resolved, unless it is a place no command may fill: the current or home folder, a folder
    holding either (``/``, ``..``), or one of ``protect`` (a study's storage, its sweep folder) or a folder
    holding one. Raises a one-line :class:`ConfigError` naming ``flag``."""
    out = resolved(path)
    for name, guarded in (("the current folder", Path.cwd()), ("your home folder", Path.home())):
        if _inside(guarded.resolve(), out):
            what = name if out == guarded.resolve() else f"a folder holding {name}"
            raise ConfigError(f"{flag}: {out} is {what}; give a new folder for ranksweep to fill")
    for p in protect:
        if p is None:
            continue
        p = resolved(p)
        if _inside(p, out):
            what = "is" if p == out else "holds"
            raise ConfigError(f"{flag}: {out} {what} the study's {'storage' if p.is_file() else 'sweep folder'} "
                              f"({p}); give another path")
    return out


def _marker_doc(path: Path, marker: str) -> Optional[dict[str, Any]]:
    try:
        doc = json.loads((path / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_ours(folder: Path, marker: str, legacy: Optional[Callable[[Path], bool]] = None) -> bool:
    """Whether ``folder`` holds ranksweep's ``marker`` (or passes ``legacy``: what older versions wrote)."""
    return _marker_doc(folder, marker) is not None or (legacy is not None and legacy(folder))


def check_output_dir(path: str | os.PathLike[str], flag: str, marker: str, *,
                     protect: Iterable[Optional[Path]] = (), legacy: Optional[Callable[[Path], bool]] = None,
                     ignore: Sequence[str] = ()) -> Path:
    """The folder ``flag`` names, checked before anything is written: not a file, not a guarded place
    (:func:`check_place`), and either missing, empty (names in ``ignore`` aside) or marked as ranksweep's."""
    out = check_place(path, flag, protect)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag}: {out} is a file, not a folder; give a folder")
    if out.is_dir():
        try:
            names = [p.name for p in out.iterdir() if p.name not in ignore]
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {out}: {exc.strerror or exc}") from None
        if names and not is_ours(out, marker, legacy):
            shown = ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ConfigError(f"{flag}: {out} holds files ranksweep did not write ({shown}); give a new or empty "
                              "folder (ranksweep replaces only a folder it wrote itself)")
    else:
        _creatable(out, flag)
    return out


def _creatable(out: Path, flag: str, verb: str = "create") -> None:
    """Refuse a path that cannot be created (a file on the way, no permission) before any write."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag}: cannot {verb} {out}: {parent} is a file (Not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot {verb} {out}: {parent} is not writable (Permission denied)")


def check_output_file(path: str | os.PathLike[str], flag: str, ours: Callable[[Path], bool], *,
                      protect: Iterable[Optional[Path]] = ()) -> Path:
    """The file ``flag`` names: a new path, or a file ``ours`` recognises as ranksweep's; never the study's
    storage or a folder; checked before anything is written."""
    out = resolved(path)
    for p in protect:
        if p is not None and resolved(p) == out:
            raise ConfigError(f"{flag}: {out} is the study's storage; give another file")
    if out.is_dir():
        raise ConfigError(f"{flag}: {out} is a folder; give a file")
    if out.exists():
        if not out.is_file() or not ours(out):
            raise ConfigError(f"{flag}: {out} exists and ranksweep did not write it; give a new file "
                              "(ranksweep overwrites only its own)")
    else:
        _creatable(out, flag, "write")
    return out


def write_marker(folder: Path, marker: str, **what: Any) -> None:
    """Mark ``folder`` as ranksweep's (``what``: which command, study...; no secret)."""
    from ranksweep.files import atomic_write_json

    atomic_write_json(folder / marker, {"written_by": "ranksweep", **what,
                                        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False when the
    kernel or C library lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _sweep_leftovers(out: Path, marker: str) -> None:
    """Remove what an earlier replace of ``out`` left beside it when killed (our temp folders only)."""
    for p in out.parent.glob(f".{out.name[:40]}{_TEMP}*"):
        if p.is_dir() and (is_ours(p, marker) or not any(p.iterdir())):
            shutil.rmtree(p, ignore_errors=True)


def _pause(point: str) -> None:
    """For the tests that kill a writer midway: ``RANKSWEEP_PAUSE_AT=built`` (or ``swapped``) stops here,
    after creating the file ``RANKSWEEP_PAUSE_AT.<point>`` in the working folder, until killed."""
    if os.environ.get("RANKSWEEP_PAUSE_AT") == point:
        import time

        Path(f"RANKSWEEP_PAUSE_AT.{point}").touch()
        while True:
            time.sleep(1)


def replace_dir(out: Path, build: Callable[[Path], Any], marker: str, **what: Any) -> Any:
    """Build a new ``out`` with ``build(tmp)`` in a sibling folder, mark it, and swap it in atomically;
    the old one (already checked to be ours) is removed after. Returns what ``build`` returned."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out, marker)
    tmp = out.with_name(f".{out.name[:40]}{_TEMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        got = build(tmp)
        write_marker(tmp, marker, **what)
        _pause("built")
        if out.exists() and _exchange(tmp, out):
            _pause("swapped")
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            return got
        for _ in range(5):  # no RENAME_EXCHANGE: two renames (a reader may miss `out` for a moment)
            old = out.with_name(f".{out.name[:40]}{_TEMP}old-{uuid.uuid4().hex[:8]}")
            try:
                out.rename(old)
            except FileNotFoundError:
                old = None  # type: ignore[assignment]
            try:
                tmp.rename(out)
            except OSError:  # another writer swapped its copy in between: replace that one
                continue
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            return got
        raise OSError(errno.EEXIST, "cannot replace the folder", str(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What a single run writes into its folder (ranksweep.trial.recipe, W&B's default dir, checkpoints).
RUN_WRITES = ("adapter", "config.yaml", "metrics.json", "checkpoints", "wandb")


def legacy_run(folder: Path) -> bool:
    """A run folder written before ranksweep marked them: its metrics.json is ranksweep's."""
    try:
        doc = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "trainable_params" in doc and "objective_value" in doc


def claim_run_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Make ``path`` a single run's folder: created when missing, refused when it holds a file the run would
    write (:data:`RUN_WRITES`) that ranksweep did not write; then marked as ranksweep's."""
    out = check_place(path, flag)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag}: {out} is a file, not a folder; give a folder")
    if not out.is_dir():
        _creatable(out, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot create {out}: {exc.strerror or exc}") from None
    if not is_ours(out, RUN_MARKER, legacy_run):
        taken = [name for name in RUN_WRITES if (out / name).exists()]
        if taken:
            raise ConfigError(f"{flag}: {out} already holds {', '.join(taken)}, which ranksweep did not write; give "
                              "a new or empty folder (ranksweep overwrites only its own files)")
        try:
            write_marker(out, RUN_MARKER, command="run")
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot write into {out}: {exc.strerror or exc}") from None
    return out


def creatable_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` as a folder that exists or can be created (a cache, W&B's dir), else a one-line error."""
    out = resolved(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag}: {out} is a file, not a folder; give a folder")
    if not out.exists():
        _creatable(out, flag)
    return out
