"""Checks across a run config's groups, beyond each field's own check and each group's ``validate``
(:mod:`ranksweep.config`): keys that must agree, and a ``model.id`` folder that holds a model. Called by
:meth:`ranksweep.config.RunConfig.validate`; every error is one line naming the key. Imports no schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import ConfigError
from ranksweep.validation import require


def raw_text(data: Any) -> bool:
    """Whether the dataset is raw text (a text column, no prompt/response): nothing to generate or match."""
    return bool(getattr(data, "text_column", None)) or getattr(data, "format", "auto") == "text"


def check_cross_keys(run: Any) -> None:
    """What one key says about another: the objective, the task metric and the data agree; a nested-rank
    trial's prefixes fit in its adapter, whose full rank is a prefix too."""
    ranks, r = list(run.trial.nested_ranks), run.lora.r
    require(not ranks or max(ranks) <= r, f"trial.nested_ranks={ranks} has a rank above lora.r={r}: a "
            f"rank-{r} adapter has no prefix of more than {r} components")
    require(not ranks or r in ranks,
            f"trial.nested_ranks={ranks} must include lora.r={r}: the full rank is a prefix too")
    data = run.data
    if run.objective == "exact_match":
        require(not raw_text(data), "objective=exact_match needs prompt/response data; raw text "
                 f"(data.text_column={data.text_column}) has no response to match: use objective=eval_loss")
        require(data.metric == "exact_match", "objective=exact_match needs data.metric=exact_match")
        require(data.metric_examples > 0,
                 f"objective=exact_match needs data.metric_examples > 0 (the eval examples it generates), "
                 f"got {data.metric_examples}")


def check_model_id(model_id: Any) -> None:
    """A local folder holds a model (config, weights, tokenizer), not only an adapter: what ``from_pretrained``
    would otherwise fail on after the data loaded, with a message about sentencepiece. (``tiny:<family>``
    is checked on the field, :class:`ranksweep.config.ModelConfig`.)"""
    text = str(model_id)
    if text.startswith(("tiny:", "embedded:")) or "://" in text:
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
