"""A Hydra app with ranksweep's configs and sweeper but a cheap task function: a synthetic objective
of (rank, learning rate) instead of a QLoRA trial, reported to Optuna the way a trial reports.

    python -m helpers.synthetic_app -m hydra.sweeper.study_name=s ...   (from tests/)

The true capacity curve ``v(r)`` falls by ``step`` per doubling up to ``true_rank`` and is flat after
it; training at a learning rate away from the rank's best costs ``c * log10(lr / best_lr(r))**2``,
and the best learning rate halves with every doubling (``best_lr(8) = 1e-3``), as under a constant
LoRA scale. Eval values fall towards the final value over the steps, so pruners have curves to read;
per-example results (64 examples of fixed difficulty, small seeded noise) feed the paired bootstrap.

A nested prescreen job (``trial.nested_ranks``) also stores every prefix b, on a curve of the same shape whose
knee is ``SYN_PRESCREEN_RANK`` (default: the true rank): a prescreen that places the knee right or wrong.
"""

from __future__ import annotations

import math
import os

import hydra
import numpy as np
from omegaconf import DictConfig

from ranksweep.compose import config_path
from ranksweep.errors import TrialPruned

TRUE_RANK = int(os.environ.get("SYN_TRUE_RANK", "32"))
PRESCREEN_RANK = int(os.environ.get("SYN_PRESCREEN_RANK", str(TRUE_RANK)))
STEP = float(os.environ.get("SYN_STEP", "0.05"))
C = float(os.environ.get("SYN_C", "0.2"))
N = 64


def best_lr(r: int) -> float:
    return 1e-3 * 8 / r


def value(r: int, lr: float, knee: int = 0) -> float:
    capacity = 1.0 + STEP * max(0.0, math.log2((knee or TRUE_RANK) / r))
    return capacity + C * math.log10(lr / best_lr(r)) ** 2


def per_example(final: float, seed: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example losses (summed over 10 tokens each) whose mean is ``final``, with small seeded noise."""
    difficulty = np.random.default_rng(1234).gamma(4.0, 0.25, size=N)
    noise = np.random.default_rng(seed * 100_003 + r).normal(0.0, 0.002, size=N)
    tokens = np.full(N, 10.0)
    return (final * difficulty / difficulty.mean() + noise) * tokens, tokens


@hydra.main(version_base="1.3", config_path=config_path(), config_name="config")
def main(cfg: DictConfig) -> float:
    from ranksweep.pruning import OptunaReporter

    r, lr, seed = int(cfg.lora.r), float(cfg.trainer.lr), int(cfg.trainer.seed)
    steps, every = int(cfg.trainer.max_steps), int(cfg.trainer.eval_every)
    start = 3.0
    final = start if steps == 0 else value(r, lr)
    reporter = OptunaReporter.from_handle(cfg.trial, max_steps=steps, eval_every=every)
    for step in range(every, steps + 1, every):
        v = final + (start - final) * math.exp(-4.0 * step / steps)
        reporter.report(step, v)
        if step < steps and reporter.should_prune():  # a finished trial is a result
            raise TrialPruned(step, v)
    loss, tokens = per_example(final, seed, r)
    attrs = {"lr": lr, "trainable_params": 1000 * r, "duration_s": 0.1, "eval_loss": final, "steps": steps,
             "eval_examples": {"loss": loss.tolist(), "tokens": tokens.tolist(), "fingerprint": "syn"}}
    nested = list(cfg.trial.get("nested_ranks") or [])
    if nested and os.environ.get("SYN_PRESCREEN_FAIL"):
        raise RuntimeError("the nested prescreen broke (SYN_PRESCREEN_FAIL)")
    if nested:  # the prescreen: every prefix b (the best learning rate of r=b, as a nested run finds it)
        prefixes = {}
        for b in nested:
            v = value(b, best_lr(b), PRESCREEN_RANK)
            pl, pt = per_example(v, seed, b)
            prefixes[str(b)] = {"value": float(pl.sum() / pt.sum()), "eval_loss": v, "loss": pl.tolist(),
                                "tokens": pt.tolist(), "fingerprint": "syn", "n": N}
        attrs["prescreen"] = {"ranks": nested, "prefixes": prefixes, "drawn": {}}
    reporter.set_attrs(attrs)
    return float(loss.sum() / tokens.sum())


if __name__ == "__main__":
    main()
