"""Predict a trial's peak memory before launching it, and plan how the trial spends its memory limit.

- :mod:`ranksweep.memory.estimate`: the peak-memory formula (:func:`estimate`, :func:`estimate_run`),
  the built-in model shapes and the GPU anchors it was fitted to;
- :mod:`ranksweep.memory.plan`: :func:`plan_memory`, which turns the limit into dequantized and
  checkpointed layers.
"""

from __future__ import annotations

from ranksweep.memory.estimate import (
    ANCHOR_FOOTPRINT_GB,
    ANCHOR_TRAINABLE,
    ANCHORS,
    BLOCKSIZE,
    DQ_BLOCKSIZE,
    GB,
    KNOWN_SHAPES,
    LOGIT_EXTRA_BYTES,
    OPTIMIZER_STATE_BYTES,
    OVERHEAD_PER_PARAM,
    MemoryEstimate,
    Shape,
    estimate,
    estimate_run,
    known_config,
    linear_shapes,
    lora_params,
    model_config_for,
    model_dims,
    run_device,
    target_shapes,
    text_config,
)
from ranksweep.memory.plan import HEADROOM, MemoryPlan, device_memory_gb, plan_memory

__all__ = [
    "ANCHORS",
    "ANCHOR_FOOTPRINT_GB",
    "ANCHOR_TRAINABLE",
    "BLOCKSIZE",
    "DQ_BLOCKSIZE",
    "GB",
    "HEADROOM",
    "KNOWN_SHAPES",
    "LOGIT_EXTRA_BYTES",
    "OPTIMIZER_STATE_BYTES",
    "OVERHEAD_PER_PARAM",
    "MemoryEstimate",
    "MemoryPlan",
    "Shape",
    "device_memory_gb",
    "estimate",
    "estimate_run",
    "known_config",
    "linear_shapes",
    "lora_params",
    "model_config_for",
    "model_dims",
    "plan_memory",
    "run_device",
    "target_shapes",
    "text_config",
]
