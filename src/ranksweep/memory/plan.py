"""Spending a trial's memory limit on speed: dequantized weights first, then fewer recomputed layers.

:func:`plan_memory` decides, from :func:`ranksweep.memory.estimate.estimate_run`, how many 4-bit
layers keep dequantized copies and how many layers recompute their activations;
:mod:`ranksweep.speed` carries the plan out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ranksweep.errors import ConfigError
from ranksweep.memory.estimate import GB, MemoryEstimate, estimate_run, model_config_for, model_dims, text_config

__all__ = ["HEADROOM", "MemoryPlan", "device_memory_gb", "plan_memory"]


def device_memory_gb(device: str) -> Optional[float]:
    """What a trial on ``device`` may use: a GPU's total memory, or the RAM available now (CPU)."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GB
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    except (ValueError, OSError, AttributeError):
        return None


HEADROOM = 0.9  # auto spends memory on speed up to this share of the limit (the estimate is +-15%)


@dataclass
class MemoryPlan:
    """How a trial will use memory: checkpointed and dequant-cached layers, estimate, limit, fit."""

    ckpt_layers: int
    layers: int
    estimate: Optional[MemoryEstimate]
    limit_gb: Optional[float]
    reason: str = ""
    dequant_layers: int = 0

    @property
    def grad_ckpt(self) -> bool:
        return self.ckpt_layers > 0

    @property
    def fits(self) -> bool:
        return self.estimate is None or self.limit_gb is None or self.estimate.total / GB <= self.limit_gb

    def describe(self) -> str:
        if self.estimate is None:
            return self.reason or "no estimate"
        limit = f"{self.limit_gb:.2f} GB" if self.limit_gb is not None else "unknown"
        ckpt = ("off" if not self.ckpt_layers else "on" if self.ckpt_layers >= self.layers
                else f"on for {self.ckpt_layers} of {self.layers} layers")
        cache = f", dequantized weights kept for {self.dequant_layers} of {self.layers} layers" \
            if self.dequant_layers else ""
        return (f"estimated peak {self.estimate.total / GB:.2f} GB (gradient checkpointing {ckpt}{cache}) "
                f"for a limit of {limit}")


def _largest(lo: int, hi: int, ok) -> int:
    """The largest n in [lo, hi] with ok(n), for ok true up to some point; lo - 1 when none."""
    if not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def plan_memory(run: Any, device: str, config: Any = None) -> MemoryPlan:
    """Spend the memory limit on speed: dequantized weights first, then fewer recomputed layers.

    ``trainer.memory_limit_gb`` (default: the device's memory) is the budget. Under ``auto``:

    1. dequant_cache keeps the dequantized weights of as many 4-bit layers as fit in
       ``HEADROOM`` of the limit with every layer checkpointed (bitsandbytes otherwise
       dequantizes each weight in every forward and backward: the reference's NF4 LoRA ran 25%
       slower than bf16 LoRA; a layer's copy costs 2 bytes per weight on a GPU);
    2. gradient checkpointing recomputes as few layers as keep the estimate in that budget
       (recomputing every layer cost 26% of a step on the 1B anchor, 30,486 vs 22,559
       tokens/s, for 2.3x less memory).

    Forced values (true/false) are kept. The trial fits when the estimate of the plan is under
    the limit. ``config`` is the loaded model's config (a trial passes it); without it the shape
    is read as ``ranksweep estimate`` does. A model whose shape cannot be read gets no estimate:
    it runs with neither.
    """
    ckpt, cache = run.trainer.checkpointing, run.trainer.caching
    limit = run.trainer.memory_limit_gb
    if limit is None:
        limit = device_memory_gb(device)
    try:
        config = model_config_for(run) if config is None else text_config(config)
        layers = int(model_dims(config)["L"])
        estimate_run(run, grad_ckpt=False, config=config)
    except (ConfigError, AttributeError, TypeError) as exc:
        return MemoryPlan(1 if ckpt else 0, 1, None, limit, reason=str(exc))
    n_cache = layers if cache and run.quant.bits == 4 else 0
    if limit is None:  # nothing to plan against: the forced values, else neither
        k = layers if ckpt else 0
        return MemoryPlan(k, layers, estimate_run(run, grad_ckpt=k, dequant_layers=n_cache, config=config), limit,
                          dequant_layers=n_cache)
    budget = HEADROOM * limit

    def total(k: int, c: int) -> float:
        return estimate_run(run, grad_ckpt=k, dequant_layers=c, config=config).total / GB

    # Checkpointing the last layer saves nothing (it would be recomputed first, at once), so auto
    # recomputes at most layers - 1; true recomputes every layer, as transformers does.
    k_most = layers if ckpt else 0 if ckpt is False else max(layers - 1, 1)
    if cache is None and run.quant.bits == 4:
        n_cache = max(0, _largest(0, layers, lambda c: total(k_most, c) <= budget))
    k = k_most
    if ckpt is None:  # the fewest recomputed layers that keep the plan in the budget
        k = layers - _largest(layers - k_most, layers, lambda m: total(layers - m, n_cache) <= budget)
        k = min(k, k_most)
    return MemoryPlan(k, layers, estimate_run(run, grad_ckpt=k, dequant_layers=n_cache, config=config), limit,
                      dequant_layers=n_cache)
