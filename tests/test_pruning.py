"""Rank-aware pruning on a real (in-memory) Optuna study, and the job's OOM retry config."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf

from ranksweep.job import halve_batch
from ranksweep.pruning import ParentRankPruner


def _study_with_parent(curve: dict[int, float]) -> tuple[optuna.Study, int]:
    study = optuna.create_study(direction="minimize")
    parent = study.ask()
    for step, value in curve.items():
        parent.report(value, step)
    study.tell(parent, curve[max(curve)])
    return study, parent.number


@pytest.mark.parametrize("step, child, pruned", [
    (2, 9.0, False),   # early: learning curves of ranks look alike, never prune
    (8, 4.30, True),   # late and clearly behind the parent (gap 0.3 > 10% of parent's gain 1.0)
    (8, 4.05, False),  # late, behind by less than the margin: noise
    (8, 3.90, False),  # late and ahead of the parent
    (7, 9.0, False),   # the parent has no value at this step
])
def test_parent_rank_pruner(step, child, pruned):
    study, parent_no = _study_with_parent({2: 4.5, 4: 4.2, 6: 4.1, 8: 4.0})
    study.pruner = ParentRankPruner(after_step=6, margin=0.1)
    trial = study.ask()
    trial.set_user_attr("parent_trial_number", parent_no)
    trial.set_user_attr("base_eval_loss", 5.0)  # parent's gain over base at step 8: 1.0
    trial.report(child, step)
    assert trial.should_prune() is pruned


def test_pruner_needs_a_parent():
    study, _ = _study_with_parent({8: 4.0})
    study.pruner = ParentRankPruner(after_step=1)
    trial = study.ask()
    trial.report(100.0, 8)
    assert trial.should_prune() is False


def test_intermediate_values_are_losses_whatever_the_objective():
    """An exact-match study maximizes, but trials report eval losses: higher is still worse."""
    study = optuna.create_study(direction="maximize", pruner=ParentRankPruner(after_step=1, margin=0.0))
    parent = study.ask()
    parent.report(2.0, 4)
    study.tell(parent, 0.8)
    worse, better = study.ask(), study.ask()
    for trial, loss in ((worse, 2.5), (better, 1.5)):
        trial.set_user_attr("parent_trial_number", parent.number)
        trial.report(loss, 4)
    assert worse.should_prune() is True
    assert better.should_prune() is False


def test_cancelled_speculative_rank_is_pruned_at_once():
    study = optuna.create_study(pruner=ParentRankPruner(after_step=100, compare=False))
    trial = study.ask()
    trial.report(1.0, 1)
    assert trial.should_prune() is False
    trial.set_user_attr("cancel_reason", "not needed: the ladder stopped at r=32")
    assert trial.should_prune() is True


def test_oom_retry_halves_the_micro_batch_and_doubles_accumulation():
    cfg = OmegaConf.create({"trainer": {"micro_batch": 8, "grad_accum": 2}})
    retry = halve_batch(cfg)
    assert (retry.trainer.micro_batch, retry.trainer.grad_accum) == (4, 4)
    assert cfg.trainer.micro_batch == 8, "the original config is untouched"
    assert halve_batch(OmegaConf.create({"trainer": {"micro_batch": 1, "grad_accum": 1}})) is None


def test_job_exceptions_survive_pickling():
    """Out-of-process launchers (submitit, joblib) pickle a failed job's exception back."""
    import pickle

    from ranksweep.errors import ConfigError, TrialFailed, TrialPruned

    pruned = pickle.loads(pickle.dumps(TrialPruned(12, 1.25)))
    assert (pruned.step, pruned.value) == (12, 1.25)
    failed = pickle.loads(pickle.dumps(TrialFailed("CUDA out of memory", kind="oom")))
    assert (failed.reason, failed.kind) == ("CUDA out of memory", "oom")
    config_error = pickle.loads(pickle.dumps(ConfigError("lora.r must be a positive integer, got -4")))
    assert str(config_error).startswith("lora.r")
