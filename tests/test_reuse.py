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


class _Interrupt(Exception):
    pass


def test_resumed_trial_on_a_reused_base(compose_cfg, tmp_path):
    """A trial interrupted after its checkpoint, resumed on the worker's reused quantized base: the run
    of an uninterrupted fresh load, and the base as it was."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise _Interrupt

    over = ("trainer.max_steps=8", "trainer.eval_every=4", "trainer.save_every=4",
            f"trial.checkpoint_dir={tmp_path / 'ckpt'}")
    cfg = compose_cfg(*over)
    run = to_run_config(cfg)
    job._BASE.clear()
    fresh = run_trial(compose_cfg("trainer.max_steps=8", "trainer.eval_every=4"), tmp_path / "fresh")

    base = job.cached_base(run)
    before = _base_state(base[0])
    try:
        run_trial(cfg, tmp_path / "first", base_loader=lambda: job.cached_base(run), callbacks=[StopAt()])
    except _Interrupt:
        pass
    assert (tmp_path / "ckpt" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not any("lora_" in name for name, _ in base[0].named_modules()), "the interrupted adapter was removed"
    resumed = run_trial(cfg, tmp_path / "resumed", base_loader=lambda: job.cached_base(run))
    assert job.cached_base(run) is base
    assert resumed.metrics["resumed_from_step"] == 4 and resumed.metrics["steps"] == 8
    assert abs(resumed.metrics["eval_loss"] - fresh.metrics["eval_loss"]) < 1e-3
    after = _base_state(base[0])
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights unchanged"
    job._BASE.clear()
