"""A trial that survives its worker: where its checkpoints go, and which one it resumes from.

The Trainer writes the checkpoints (``trainer.save_every``): ``checkpoint-<step>/`` with the adapter,
optimizer, scheduler, RNG states and ``trainer_state.json`` (the step, hence the data position), plus
ranksweep's counters. ``ranksweep_run.json`` beside them records the configuration that wrote them:
a trial resumes only from checkpoints of its own configuration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from ranksweep.config import RunConfig
from ranksweep.errors import ConfigError
from ranksweep.files import atomic_write_json

__all__ = ["CHECKPOINT_STATE", "RUN_FILE", "checkpoint_dir", "claim", "clear", "last_checkpoint", "save_state",
           "saved_state"]

log = logging.getLogger("ranksweep")

RUN_FILE = "ranksweep_run.json"
# What ranksweep keeps in each checkpoint beside the Trainer's own files, written after them (on_save):
# a checkpoint is complete only once this file is there.
CHECKPOINT_STATE = "ranksweep_state.json"
_COMPLETE = ("trainer_state.json", CHECKPOINT_STATE)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys that do not change what a trial trains: a resumed run may differ in them.
_FREE = {"model": {"name", "params_b"}, "data": {"metric", "metric_examples", "max_new_tokens", "name"},
         "trainer": {"save_every", "eval_every", "log_every", "eval_batch", "memory_limit_gb", "reuse_base",
                     "device"}}


def checkpoint_dir(run: RunConfig, out: Path) -> Optional[Path]:
    """``trial.checkpoint_dir``, else ``<out>/checkpoints`` when ``trainer.save_every`` is set, else None."""
    if run.trial.checkpoint_dir:
        return Path(os.path.expanduser(str(run.trial.checkpoint_dir)))
    return out / "checkpoints" if run.trainer.save_every else None


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return sorted(found)


def last_checkpoint(folder: Optional[Path]) -> Optional[Path]:
    """The last complete checkpoint in ``folder``: the Trainer's ``trainer_state.json`` (which it writes
    last) and ranksweep's state (written after it). Checkpoints a killed worker left half-written are removed:
    resuming from one would restart ranksweep's counters from zero."""
    if folder is None:
        return None
    complete = None
    for _, path in _checkpoints(folder):
        if all((path / name).is_file() for name in _COMPLETE):
            complete = path
        else:
            log.warning("removing the incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return complete


def save_state(checkpoint: Path, supervised_tokens: int) -> None:
    """ranksweep's counters into a checkpoint the Trainer has just written (atomically, last)."""
    atomic_write_json(checkpoint / CHECKPOINT_STATE, {"supervised_tokens": int(supervised_tokens)})


def saved_state(checkpoint: Path) -> dict[str, Any]:
    """The counters of a complete checkpoint (see :func:`last_checkpoint`)."""
    return json.loads((Path(checkpoint) / CHECKPOINT_STATE).read_text(encoding="utf-8"))


_CONTENT = " content"  # a data source's content key: "data.path content" reads as the data, not its path


def _fingerprint(run: RunConfig, data: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The configuration that trains a trial and, with ``data`` (``{"data.path": digest}``, see
    :mod:`ranksweep.data.identity`), what its data files hold: ``data.path content``."""
    out = {}
    for group in ("model", "quant", "lora", "data", "trainer"):
        values = dataclasses.asdict(getattr(run, group))
        out[group] = {k: v for k, v in values.items() if k not in _FREE.get(group, set())}
    for key, digest in (data or {}).items():
        out["data"][f"{key.split('.', 1)[-1]}{_CONTENT}"] = digest
    return json.loads(json.dumps(out, default=str))


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{g}.{k}" for g in sorted(set(a) | set(b)) for k in sorted(set(a.get(g, {})) | set(b.get(g, {})))
            if a.get(g, {}).get(k) != b.get(g, {}).get(k)]


def claim(folder: Path, run: RunConfig, data: Optional[dict[str, str]] = None) -> Optional[Path]:
    """Make ``folder`` this run's checkpoint folder; return the checkpoint to resume from (None: step 0).
    ``data``: what the data files hold (``DataIdentity.digests``): checkpoints made on other data are not
    resumed either.

    Raises:
        ConfigError: naming ``trial.checkpoint_dir`` when it holds checkpoints of another configuration
        or of other data.
    """
    from ranksweep.ownership import check_output_dir

    # A folder the user names must be new, empty, or one ranksweep wrote (its record file): incomplete
    # checkpoints are removed below, and nothing else may be.
    folder = check_output_dir(folder, "trial.checkpoint_dir", RUN_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    mine = _fingerprint(run, data)
    record = folder / RUN_FILE
    resume = last_checkpoint(folder)
    if resume is not None:
        try:
            theirs = json.loads(record.read_text())
        except (OSError, ValueError):
            theirs = None
        old = isinstance(theirs, dict) and not any(k.endswith(_CONTENT) for k in (theirs.get("data") or {}))
        if old and data and theirs == _fingerprint(run):  # recorded before data contents were: resumed
            atomic_write_json(record, mine)
            theirs = mine
        if theirs != mine:
            found = _differences(theirs or {}, mine) if theirs else []
            diff = ", ".join(found[:4]) if theirs else f"no {RUN_FILE}"
            what = "other data" if found and all(k.endswith(_CONTENT) for k in found) else "another configuration"
            raise ConfigError(f"trial.checkpoint_dir: {folder} holds checkpoints of {what} "
                              f"({diff}); use another folder, or delete it to start over")
        return resume
    atomic_write_json(record, mine)
    return None


def clear(folder: Optional[Path]) -> None:
    """Remove the checkpoints in ``folder`` (the OOM retry starts over with another batch shape)."""
    if folder is None:
        return
    for _, path in _checkpoints(folder):
        shutil.rmtree(path, ignore_errors=True)
    (folder / RUN_FILE).unlink(missing_ok=True)
