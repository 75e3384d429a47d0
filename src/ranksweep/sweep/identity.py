"""What a study is: safe names, the trial config each ladder was started with, and the folder it owns.

- Names that become paths (the study name is the sweep folder's name) must be made of letters,
  digits, ``.``, ``_`` and ``-``, starting with a letter or digit: nothing that climbs out of
  ``outputs/sweeps/``. Ladder keys are stored, never used as paths: they only must be printable.
- Each ladder's fully composed trial config (everything but the rank, the seed, the searched keys
  and what the sweeper sets per job) is stored in the study with a fingerprint; a resumed or added
  worker whose config differs (an edited config file, another override) is refused, with the first
  differing keys.
- Each ladder's data by content (:mod:`ranksweep.data.identity`: a file's sha256, a saved dataset's
  state) is stored beside its config: a resume on edited data is refused, naming the file, so that a
  study's rungs are never measured on two datasets.
- A sweep folder records the storage and study it belongs to (``.ranksweep-study.json``); a study of
  the same name on another storage is refused there instead of overwriting the first one's trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from ranksweep.errors import ConfigError
from ranksweep.files import atomic_write_json
from ranksweep.sweep import keys
from ranksweep.urls import journal_path, mask_secrets, sqlite_path

__all__ = ["MARKER", "bind_folder", "bind_study", "check_label", "check_name", "open_folder",
           "storage_identity", "trial_identity"]

MARKER = ".ranksweep-study.json"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Set per job by the sweeper, or local to a machine: not part of what a ladder trains.
PER_JOB = ("lora.r", "trainer.seed", "logger.group", "cache_dir", "output_dir", "logger.dir")
PER_JOB_PREFIXES = ("trial.",)


def check_name(key: str, value: Any) -> str:
    """``value`` when it is safe as one path component, else a one-line :class:`ConfigError` naming ``key``."""
    text = str(value)
    if not SAFE_NAME.fullmatch(text):
        raise ConfigError(f"{key} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                          f"got {text!r}")
    return text


def check_label(key: str, value: Any) -> str:
    """A label that is stored and shown but never a path: printable, one line, at most 500 characters."""
    text = str(value)
    if len(text) > 500 or any(not c.isprintable() for c in text):
        raise ConfigError(f"{key}: {text[:80]!r} must be printable, on one line, at most 500 characters")
    return text


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def trial_identity(run: Any, searched: Iterable[str] = ()) -> dict[str, Any]:
    """The ladder's trial config as ``{dotted key: value}`` (JSON values), without the per-job keys."""
    flat = _flat(json.loads(json.dumps(dataclasses.asdict(run), default=str)))
    skip = set(PER_JOB) | set(searched)
    return {k: v for k, v in sorted(flat.items()) if k not in skip and not k.startswith(PER_JOB_PREFIXES)}


def _fingerprint(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def _short(value: Any) -> str:
    text = json.dumps(mask_secrets(value))
    return text if len(text) <= 40 else text[:37] + "..."


def bind_study(study: Any, identities: dict[str, dict[str, Any]], name: str, data: Optional[dict[str, Any]] = None
               ) -> None:
    """Store each ladder's trial config in the study, or refuse one that differs from what is stored.

    ``data``: each ladder's :class:`ranksweep.data.identity.DataIdentity` (what its files hold), stored beside
    its config; a resume whose data changed is refused, naming the file. A study stored before data was
    part of its identity gets it recorded."""
    stored = dict(study.user_attrs.get(keys.STUDY_IDENTITY) or {})
    changed = False
    for ladder, flat in identities.items():
        old = stored.get(ladder)
        if not isinstance(old, dict) or "config" not in old:  # a new study, or one made before identities
            stored[ladder] = {"fingerprint": _fingerprint(flat), "config": flat}
            changed = True
        elif old.get("fingerprint") == _fingerprint(flat):
            pass
        else:
            _refuse_config(old["config"], flat, ladder, name)
        now = (data or {}).get(ladder)
        if now is None:
            continue
        was = stored[ladder].get("data")
        if not isinstance(was, dict):  # new, or stored before data was part of a study's identity
            stored[ladder] = {**stored[ladder], "data": now.to_dict()}
            changed = True
        elif was.get("digest") != now.digest:
            _refuse_data(was.get("sources") or {}, now, ladder, name)
    if changed:
        study.set_user_attr(keys.STUDY_IDENTITY, stored)


def _refuse_data(was: dict[str, Any], now: Any, ladder: str, name: str) -> None:
    from ranksweep.data.identity import describe_change

    diff = describe_change(was, now) or [("data", "the data", f"digest {now.digest}")]
    key, what, evidence = diff[0]
    more = "".join(f"; {k}: {w} changed too" for k, w, _ in diff[1:])
    where = "" if ladder == "default" else f" (ladder {ladder!r})"
    raise ConfigError(f"{key}: {what} changed since study {name!r}{where} was started ({evidence}){more}; restore "
                      f"{'them' if more else 'it'} to resume, or pick a new hydra.sweeper.study_name to start a new "
                      "study")


def _refuse_config(was: dict[str, Any], flat: dict[str, Any], ladder: str, name: str) -> None:
    diff = [k for k in sorted(set(was) | set(flat)) if was.get(k, "<unset>") != flat.get(k, "<unset>")]
    shown = ", ".join(f"{k} ({_short(was.get(k, '<unset>'))} -> {_short(flat.get(k, '<unset>'))})"
                      for k in diff[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    where = "" if ladder == "default" else f" ladder {ladder!r}"
    raise ConfigError(f"hydra.sweeper.study_name: study {name!r}{where} was started with another trial config "
                      f"(differs in {shown}{more}); rerun with the config it was started with to resume, or pick "
                      "a new study_name")


def storage_identity(url: str) -> str:
    """What names a storage across runs: its file (absolute) or its URL without the password."""
    for scheme, path in (("sqlite:///", sqlite_path(url)), ("journal://", journal_path(url))):
        if path is not None:
            return scheme + str(path.expanduser().resolve())
    return str(mask_secrets(str(url)))


def _read_marker(folder: Path) -> Optional[dict[str, Any]]:
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def open_folder(folder: Path, storage: str, study_name: str) -> None:
    """Create the sweep folder (before the storage is written to: an unwritable place fails first) and
    refuse one that belongs to another storage or study."""
    from ranksweep.ownership import check_place
    from ranksweep.urls import storage_file

    check_place(folder, "hydra.sweep.dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"hydra.sweep.dir: cannot create {exc.filename or folder}: {exc.strerror or exc}") from exc
    doc = _read_marker(folder)
    if doc is None:
        # Not marked yet: empty, or what a sweep made before folders were marked. Anything else is the
        # user's: the sweep writes trial folders, a summary, a plot and best/ here, so it is refused.
        db = storage_file(storage)  # a storage the user keeps in the sweep folder is no reason to refuse it
        theirs = [p.name for p in folder.iterdir() if not _sweep_made(p) and (db is None or p != db.resolve())]
        if theirs:
            shown = ", ".join(sorted(theirs)[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise ConfigError(f"hydra.sweep.dir: {folder} holds files ranksweep did not write ({shown}); give a new "
                              "or empty folder")
        return
    if not doc:
        raise ConfigError(f"hydra.sweep.dir: {folder / MARKER} is unreadable; restore it, or pick another "
                          "hydra.sweeper.study_name")
    if (doc.get("storage"), doc.get("study_name")) != (storage, study_name):
        raise ConfigError(
            f"hydra.sweep.dir: {folder} holds the trials of study {doc.get('study_name')!r} in {doc.get('storage')}, "
            f"not of study {study_name!r} in {storage}; pick another hydra.sweeper.study_name for this storage "
            f"(or another hydra.sweep.dir)")


def _sweep_made(p: Path) -> bool:
    """What a sweep writes into its folder (also before sweep folders were marked)."""
    return (p.name.startswith(("trial-", ".submitit", ".hydra", ".ranksweep")) or p.name in (
        "sweep_summary.json", "rank_curve.png", "best", "checkpoints", "multirun.yaml", "wandb"))


def bind_folder(folder: Path, storage: str, study_name: str) -> None:
    """Record whose the sweep folder is (kept as it is once written)."""
    if _read_marker(folder) is not None:
        return
    try:
        atomic_write_json(folder / MARKER, {"study_name": study_name, "storage": storage})
    except OSError as exc:
        raise ConfigError(f"hydra.sweep.dir: cannot write {exc.filename or folder}: {exc.strerror or exc}") from exc
