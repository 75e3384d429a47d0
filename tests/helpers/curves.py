"""Rank curves the tests share: published ones and simulated per-example evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The LoRA paper (Hu et al. 2021), Table 18: GPT-2 Medium on E2E, validation loss per rank.
TABLE18_RANKS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
TABLE18_LOSS = [1.23, 1.21, 1.18, 1.17] + [1.16] * 6 + [1.17]

# `make sweep` on a fresh clone before the method changed (issue "Rank truth"): r = 8, 16, 32.
README_RANKS = [8, 16, 32]
README_LOSS = [2.0686, 1.8299, 1.7605]


def simulate(values: Sequence[tuple[int, float]], seed: int, n: int = 400, noise: float = 0.015):
    """Per-example evaluations of rungs with true values ``(rank, value)``: ``n`` examples of gamma-distributed
    difficulty and 5-30 scored tokens, each rung's per-example loss off by ``noise`` (relative) at random.
    Returns :class:`ranksweep.sweep.rules.Step` objects."""
    from ranksweep.sweep.rules import Step
    from ranksweep.sweep.stats import Examples

    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(4.0, 0.25, n)
    tokens = rng.integers(5, 31, n).astype(float)
    steps = []
    for rank, v in values:
        ex = Examples.of([(v * difficulty + rng.normal(0.0, noise * v, n)) * tokens], tokens)
        steps.append(Step(rank, ex.value(), ex, [ex.value()]))
    return steps
