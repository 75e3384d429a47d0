"""Nested ranks on peft's LoRA layers: one adapter that can be read at every rank of a ladder.

DyLoRA- or Matryoshka-style training: each step uses only the first b components of every ``lora_A`` (rows)
and ``lora_B`` (columns), with b drawn from the ladder's ranks and the scale the alpha rule gives rank b. Prefix
b then behaves exactly as a plain rank-b adapter whose A and B are those first b components
(:func:`truncate_state_dict`, :func:`save_prefix`).

- :func:`nest` / :func:`unnest`: hook every LoRA layer of a peft model; :func:`set_prefix` and the context
  manager :func:`prefix` choose b (``None``: the full rank, as peft runs it);
- :class:`RankSampler` and :class:`NestedRankCallback`: a seeded draw of b at every optimizer step of a Trainer.

The hooks change no module class, parameter, buffer or config: ``save_pretrained`` writes the same plain peft
adapter (rank r, all r components) with or without them. While a prefix is set, peft's ``scaling`` holds the
prefix's scale: merge or unload at the full rank (or after :func:`unnest`). Under ``torch.compile``, each
distinct b is one more graph (the mask and the scale are guarded constants).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from peft.tuners.lora import layer as lora_layer
from torch import nn
from transformers import TrainerCallback

from ranksweep.config import LoraConfig

__all__ = ["NestedRankCallback", "RankSampler", "Scale", "alpha_scale", "is_nested", "nest", "prefix",
           "rule_alpha", "rule_scale", "save_prefix", "set_prefix", "truncate_config", "truncate_state_dict",
           "unnest"]

Scale = Callable[[int], float]  # rank b -> the factor peft multiplies B @ A by at rank b
_STATE = "_ranksweep_nested"  # the attribute a nested LoRA layer keeps its _Nested in (plain Python, unsaved)


def _supported() -> tuple[type, ...]:
    """peft's LoRA layers whose forward is ``base(x) + lora_B(lora_A(dropout(x))) * scaling``."""
    from peft.tuners.lora import bnb as lora_bnb  # bitsandbytes is a dependency: Linear4bit and Linear8bitLt

    return (lora_layer.Linear, *(getattr(lora_bnb, n) for n in ("Linear4bit", "Linear8bitLt") if hasattr(lora_bnb, n)))


def alpha_scale(alpha: float, rslora: bool = False) -> Scale:
    """peft's scale for rank b with ``lora_alpha=alpha``: ``alpha / b``, or ``alpha / sqrt(b)`` with rsLoRA."""

    def scale(b: int) -> float:
        return alpha / math.sqrt(b) if rslora else alpha / b

    return scale


def rule_alpha(lora: LoraConfig, b: int) -> float:
    """The ``lora_alpha`` ranksweep's ``lora.alpha_rule`` gives rank b (``two_r``: 2b, else ``lora.alpha``)."""
    return replace(lora, r=b).lora_alpha


def rule_scale(lora: LoraConfig) -> Scale:
    """The scale ranksweep's ``lora.alpha_rule`` gives each rank b, as a separately trained rank-b trial has it."""
    return lambda b: replace(lora, r=b).scale


@dataclass
class _Nested:
    """One nested LoRA layer: its full rank and scale, the scale rule, the hook on ``lora_A``, the prefix."""

    layer: nn.Module
    adapter: str
    r: int
    scaling: float  # peft's own scale at the full rank, put back at b=None
    scale: Scale
    handle: Any = None
    b: Optional[int] = None  # the prefix asked for; None: the full rank

    def set(self, b: Optional[int]) -> None:
        self.b = b
        short = b is not None and b < self.r
        self.layer.scaling[self.adapter] = self.scale(b) if short else self.scaling  # type: ignore[index]

    def hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        """Zero ``lora_A``'s outputs from component b on: ``lora_B`` sees the first b only, and the rows of A and
        the columns of B beyond b get exactly zero gradient (a recomputed checkpointed forward masks the same)."""
        if self.b is None or self.b >= self.r:
            return None
        return output * (torch.arange(self.r, device=output.device) < self.b).to(output.dtype)


def _nested(model: nn.Module) -> list[_Nested]:
    return [m.__dict__[_STATE] for m in model.modules() if _STATE in m.__dict__]


def is_nested(model: nn.Module) -> bool:
    """Whether :func:`nest` hooked any LoRA layer in ``model``."""
    return bool(_nested(model))


def nest(model: nn.Module, scale: Union[Scale, tuple[float, bool], None] = None, adapter: str = "default") -> int:
    """Hook every LoRA layer of ``adapter`` in ``model`` so that :func:`set_prefix` can restrict its rank.

    ``scale`` gives the scale of prefix b: a callable ``b -> scale`` (:func:`rule_scale` for a ranksweep
    ``lora`` config), an ``(alpha, use_rslora)`` pair, or ``None`` for each layer's own peft ``lora_alpha`` and
    ``use_rslora`` (``alpha_rule=fixed`` or ``rslora``). Returns the number of layers hooked; the model starts
    at the full rank. Raises ValueError for a model already nested, without LoRA layers, or with a layer the
    mask cannot restrict (DoRA and other variants, embeddings, convolutions, expert parameters).
    """
    # peft (0.21) has no DyLoRA or nested-rank training: its LoRA layers always run all r components, with
    # the one scale lora_alpha / r. The mask and the per-prefix scale are added here, from outside.
    if is_nested(model):
        raise ValueError("the model is nested already; unnest() it first")
    supported = _supported()
    found: list[_Nested] = []
    for name, m in model.named_modules():
        if not isinstance(m, lora_layer.LoraLayer) or adapter not in m.r:
            continue
        if type(m) not in supported or adapter in m.lora_variant or adapter not in m.lora_A:
            raise ValueError(f"{name}: nested ranks support plain LoRA on linear layers, not {type(m).__name__}"
                             + (" with a LoRA variant (DoRA...)" if adapter in m.lora_variant else ""))
        r = int(m.r[adapter])
        if callable(scale):
            rule = scale
        else:
            alpha, rslora = (m.lora_alpha[adapter], m.use_rslora.get(adapter, False)) if scale is None else scale
            rule = alpha_scale(float(alpha), bool(rslora))
        found.append(_Nested(m, adapter, r, float(m.scaling[adapter]), rule))
    if not found:
        raise ValueError(f"no LoRA layer of adapter {adapter!r} to nest")
    for st in found:
        st.handle = st.layer.lora_A[adapter].register_forward_hook(st.hook)
        st.layer.__dict__[_STATE] = st  # a plain attribute: never a parameter, buffer or config entry
    return len(found)


def unnest(model: nn.Module) -> int:
    """Put the full rank back and remove the hooks of :func:`nest`; returns the number of layers freed."""
    found = _nested(model)
    for st in found:
        st.set(None)
        st.handle.remove()
        del st.layer.__dict__[_STATE]
    return len(found)


def set_prefix(model: nn.Module, b: Optional[int]) -> Optional[int]:
    """Make every nested layer of ``model`` use its first ``b`` components (``None``: the full rank).

    A layer of rank at most b runs at its full rank. Returns the prefix set before, for restoring it.
    """
    found = _nested(model)
    if not found:
        raise ValueError("the model is not nested: call nest(model, ...) first")
    top = max(st.r for st in found)
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= top):
        raise ValueError(f"prefix rank must be an integer from 1 to the adapter's rank {top}, or None; got {b!r}")
    before = found[0].b
    for st in found:
        st.set(b)
    return before


@contextmanager
def prefix(model: nn.Module, b: Optional[int]) -> Iterator[nn.Module]:
    """``with prefix(model, b):`` the first b components only; the prefix set before is put back after."""
    before = set_prefix(model, b)
    try:
        yield model
    finally:
        set_prefix(model, before)


def truncate_state_dict(state_dict: Mapping[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """The plain rank-b adapter made of the first b components: ``lora_A`` rows and ``lora_B`` columns.

    Takes a peft adapter's state dict (``get_peft_model_state_dict``, ``adapter_model.safetensors``) or a peft
    model's ``state_dict()``; other tensors (biases, the base) are kept as they are.
    """
    out: dict[str, torch.Tensor] = {}
    cut = 0
    for key, value in state_dict.items():
        if "lora_embedding_" in key or "lora_magnitude_vector" in key:
            raise ValueError(f"{key}: only plain LoRA on linear layers can be truncated")
        a, bb = ".lora_A." in key and key.endswith(".weight"), ".lora_B." in key and key.endswith(".weight")
        if (a or bb) and value.dim() == 2:
            r = value.shape[0] if a else value.shape[1]
            if not 1 <= b <= r:
                raise ValueError(f"{key}: rank {r} has no prefix of {b} components")
            value = value[:b] if a else value[:, :b]
            cut += 1
        out[key] = value.clone(memory_format=torch.contiguous_format)
    if not cut:
        raise ValueError("no lora_A / lora_B weights in the state dict")
    return out


def truncate_config(config: Any, b: int, lora_alpha: Optional[float] = None) -> Any:
    """A copy of peft's ``LoraConfig`` for the rank-b prefix: ``r=b``, and ``lora_alpha`` if given (else kept:
    ``alpha_rule=fixed``/``rslora``; under ``two_r`` pass :func:`rule_alpha`)."""
    if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
        raise ValueError("a LoRA config with rank_pattern or alpha_pattern has no single prefix rank")
    out = copy.deepcopy(config)
    out.r = b
    if lora_alpha is not None:
        out.lora_alpha = lora_alpha
    return out


def save_prefix(model: Any, folder: Union[str, Path], b: int, lora_alpha: Optional[float] = None,
                adapter: str = "default") -> Path:
    """Save prefix b of a peft model's ``adapter`` as an ordinary rank-b peft adapter into ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = truncate_state_dict(get_peft_model_state_dict(model, adapter_name=adapter), b)
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = truncate_config(model.peft_config[adapter], b, lora_alpha)
    config.inference_mode = True  # as peft's save_pretrained writes it
    config.save_pretrained(str(folder))
    return folder


class RankSampler:
    """Draws a prefix rank for each step, uniformly from the distinct ``ranks``, with a seeded generator."""

    def __init__(self, ranks: Sequence[int], seed: int = 0) -> None:
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(f"ranks must be positive integers; got {list(ranks)!r}")
        self.ranks = tuple(sorted(set(ranks)))
        self.rng = random.Random(seed)

    def draw(self) -> int:
        return self.rng.choice(self.ranks)


class NestedRankCallback(TrainerCallback):
    """Nested-rank training in a Trainer: a drawn prefix for each optimizer step (all its micro-batches),
    the full rank again at its end, before the Trainer logs, evaluates or saves. ``drawn``: the ranks used,
    one per optimizer step from step 1 (a run resumed from a checkpoint replays the draws of the steps before
    it: it goes on with the draws an uninterrupted run would have made, and ``drawn`` counts every step)."""

    def __init__(self, sampler: RankSampler) -> None:
        self.sampler = sampler
        self.drawn: list[int] = []

    def catch_up(self, step: int) -> None:
        """Draw (and record) for the steps up to ``step`` not drawn for yet: the steps a checkpoint holds."""
        while len(self.drawn) < step:
            self.drawn.append(self.sampler.draw())

    def on_train_begin(self, args, state, control, **kwargs):
        self.catch_up(int(state.global_step))  # > 0 when the Trainer resumed from a checkpoint

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        b = self.sampler.draw()
        set_prefix(model, b)
        self.drawn.append(b)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        set_prefix(model, None)

    on_train_end = on_step_end
