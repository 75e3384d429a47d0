"""Pruning that understands rank.

Early learning curves of different ranks look alike, so ranksweep does no
early median pruning. A trial may be pruned only late in training
(after ``prune_after`` of its steps) and only when its eval value at a step
is clearly worse than its *parent rank's* value at the same step: a doubling
that is behind the half-size adapter that late buys nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from ranksweep.storage import open_storage


class ParentRankPruner(BasePruner):
    """Prune a trial that is behind its parent rank at the same step, late in training.

    The parent is named by the trial's ``parent_trial_number`` user attribute
    (set by the sweeper). ``margin`` is a share of the parent's own gain over
    the base model's eval loss (user attribute ``base_eval_loss``), so the rule does not
    depend on the task's irreducible loss.
    """

    def __init__(self, after_step: int, margin: float = 0.0, compare: bool = True) -> None:
        self.after_step = int(after_step)
        self.margin = float(margin)
        self.compare = compare

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.user_attrs.get("cancel_reason"):  # the ladder stopped below this speculative rank
            return True
        if not self.compare:
            return False
        step = trial.last_step
        if step is None or step < self.after_step:
            return False
        parent_no = trial.user_attrs.get("parent_trial_number")
        if parent_no is None:
            return False
        parent = next((t for t in study.get_trials(deepcopy=False) if t.number == int(parent_no)), None)
        if parent is None or step not in parent.intermediate_values:
            return False
        mine = trial.intermediate_values[step]
        theirs = parent.intermediate_values[step]
        # Intermediate values are eval losses (lower is better) whatever the study's objective,
        # so the comparison ignores the study's direction; the margin is a share of the parent's
        # loss gain over the base's eval loss (user attribute base_eval_loss).
        base = trial.user_attrs.get("base_eval_loss")
        slack = 0.0
        if base is not None and math.isfinite(float(base)):
            slack = self.margin * abs(float(base) - theirs)
        return mine - theirs > slack


class OptunaReporter:
    """The job's handle on its own Optuna trial: reports eval values, asks the pruner."""

    def __init__(self, study: optuna.Study, trial_number: int) -> None:
        self.study = study
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
        self.trial = optuna.trial.Trial(study, frozen._trial_id)

    @classmethod
    def from_handle(cls, handle: Mapping[str, Any], max_steps: int) -> OptunaReporter:
        after = int(math.ceil(float(handle.get("prune_after", 0.5)) * max_steps))
        storage = open_storage(str(handle["storage"]), heartbeat=False)
        pruner = ParentRankPruner(after_step=max(after, 1), margin=float(handle.get("prune_margin", 0.0)),
                                  compare=handle.get("pruner", "parent") == "parent")
        study = optuna.load_study(study_name=str(handle["study_name"]), storage=storage, pruner=pruner)
        return cls(study, int(handle["trial_number"]))

    def report(self, step: int, value: float) -> None:
        self.trial.report(float(value), int(step))

    def should_prune(self) -> bool:
        return bool(self.trial.should_prune())

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            self.trial.set_user_attr(key, value)
