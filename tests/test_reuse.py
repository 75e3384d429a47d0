"""Reuse across trials in one worker: a trial on a reused quantized base equals one on a fresh load."""

from __future__ import annotations

import torch

from ranksweep import job
from ranksweep.config import to_run_config
from ranksweep.trial import run_trial


def _base_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_reused_base_gives_the_same_metrics_as_a_fresh_load(compose_cfg, tmp_path):
    cfg = compose_cfg("trainer.max_steps=8", "trainer.eval_every=4", "lora.r=8")
    other = compose_cfg("trainer.max_steps=8", "trainer.eval_every=4", "lora.r=16", "lora.targets=attention")

    run, other_run = to_run_config(cfg), to_run_config(other)

    job._BASE.clear()
    fresh = run_trial(cfg, tmp_path / "fresh")  # loads its own base

    base = job.cached_base(other_run)
    before = _base_state(base[0])
    run_trial(other, tmp_path / "warmup", base_loader=lambda: job.cached_base(other_run))  # dirties nothing
    assert job.cached_base(run) is base, "the same quantized base serves the next trial"
    reused = run_trial(run, tmp_path / "reused", base_loader=lambda: job.cached_base(run))

    assert reused.metrics["eval_loss"] == fresh.metrics["eval_loss"]
    assert reused.metrics["trainable_params"] == fresh.metrics["trainable_params"]
    assert reused.metrics.get("exact_match") == fresh.metrics.get("exact_match")
    after = _base_state(base[0])
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights unchanged by its trials"
    assert not any("lora_" in name for name, _ in base[0].named_modules()), "adapters were removed"
    job._BASE.clear()
