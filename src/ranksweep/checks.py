"""Checks across a whole run config, beyond each group's own ``validate``: every number finite and in
range, keys that must agree, and a ``model.id`` folder that holds a model. Called by
:meth:`ranksweep.config.RunConfig.validate`; every error is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

from ranksweep.config import FAMILIES
from ranksweep.errors import ConfigError
from ranksweep.validation import require

# Float fields their group's validate() does not bound: dotted key -> (minimum, maximum, minimum allowed).
FLOAT_BOUNDS: dict[str, tuple[float, Optional[float], bool]] = {
    "trainer.weight_decay": (0.0, None, True),
    "trial.prune_after": (0.0, 1.0, True),
    "trial.prune_margin": (0.0, None, True),
    "model.params_b": (0.0, None, False),
}
SEED_MAX = 2**32 - 1  # numpy's seeds (transformers.set_seed seeds numpy too)


def _fields(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf field of a dataclass, nested ones included."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value))
    return out


def check_numbers(run: Any) -> None:
    """Every float field of every group finite (``nan``, ``inf`` are refused), every ``*seed`` in [0, 2**32)."""
    for key, value in _fields(run):
        if isinstance(value, float):
            require(math.isfinite(value), f"{key} must be a finite number, got {value!r}")
        if key.rsplit(".", 1)[-1].endswith("seed") and isinstance(value, int) and not isinstance(value, bool):
            require(0 <= value <= SEED_MAX, f"{key} must be an integer in [0, {SEED_MAX}], got {value!r}")


def check_bounds(run: Any) -> None:
    """The ranges of :data:`FLOAT_BOUNDS`."""
    for key, (low, high, closed) in FLOAT_BOUNDS.items():
        value: Any = run
        for part in key.split("."):
            value = getattr(value, part, None)
        if value is None or isinstance(value, bool):
            continue
        ok = (value >= low if closed else value > low) and (high is None or value <= high)
        shown = f"{'[' if closed else '('}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
        require(ok, f"{key} must be in {shown}, got {value!r}")


def raw_text(data: Any) -> bool:
    """Whether the dataset is raw text (a text column, no prompt/response): nothing to generate or match."""
    return bool(getattr(data, "text_column", None)) or getattr(data, "format", "auto") == "text"


def check_cross_keys(run: Any) -> None:
    """What one key says about another: the objective, the task metric and the data agree."""
    data = run.data
    if run.objective == "exact_match":
        require(not raw_text(data), "objective=exact_match needs prompt/response data; raw text "
                 f"(data.text_column={data.text_column}) has no response to match: use objective=eval_loss")
        require(data.metric == "exact_match", "objective=exact_match needs data.metric=exact_match")
        require(data.metric_examples > 0,
                 f"objective=exact_match needs data.metric_examples > 0 (the eval examples it generates), "
                 f"got {data.metric_examples}")


def check_model_id(model_id: Any) -> None:
    """``tiny:<family>`` names a family; a local folder holds a model (config, weights, tokenizer), not only
    an adapter: what ``from_pretrained`` would otherwise fail on after the data loaded, with a message about
    sentencepiece."""
    text = str(model_id)
    if text.startswith("tiny:"):
        family = text.split(":", 1)[1]
        require(family in ("", *FAMILIES), f"model.id: tiny:<family> takes one of {', '.join(FAMILIES)}; "
                 f"got {text!r}")
        return
    if text.startswith("embedded:") or "://" in text:
        return
    folder = Path(text).expanduser()
    if text.startswith((".", "/", "~")) and not folder.exists():
        raise ConfigError(f"model.id: folder not found: {text}")
    gguf = gguf_file(text)
    if gguf is not None:
        try:
            with gguf.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ConfigError(f"model.id: cannot read {gguf}: {exc.strerror or exc}") from None
        require(magic == b"GGUF", f"model.id: {gguf} is not a GGUF file (it does not start with GGUF)")
        return
    require(not folder.is_file(),
            f"model.id: {text} is a file; point model.id at a model folder, a .gguf file or a hub id")
    problem = _model_folder_problem(folder) if folder.is_dir() else None
    require(problem is None, f"model.id: {text} is {problem}; point model.id at a folder written by "
             "save_pretrained (model and tokenizer), or a hub id")


def gguf_file(model_id: str) -> Path | None:
    """The GGUF file ``model.id`` names: a ``.gguf`` file, or a folder with one GGUF and no config.json."""
    path = Path(model_id).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ConfigError(f"model.id: {model_id} holds {len(found)} GGUF files "
                              f"({', '.join(p.name for p in found[:4])}); point model.id at one of them")
        return found[0] if found else None
    return None


def _model_folder_problem(folder: Path) -> Optional[str]:
    import json

    if not (folder / "config.json").is_file():
        return ("a LoRA adapter (adapter_config.json), not a base model" if (folder / "adapter_config.json").is_file()
                else "a folder with no model in it (no config.json)")
    try:
        doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or "model_type" not in doc:
        return "not a model folder (its config.json has no model_type)"
    if not any(any(folder.glob(p)) for p in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")):
        return "a model config without weights (no *.safetensors or *.bin)"
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                                 "vocab.json", "spiece.model")):
        return "a model without a tokenizer (no tokenizer.json, tokenizer.model or tokenizer_config.json)"
    return None
