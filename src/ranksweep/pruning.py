"""Pruning that understands rank.

Early learning curves of different ranks look alike, so ranksweep does no
early median pruning. A trial may be pruned only late in training
(after ``prune_after`` of its steps) and only when its eval value at a step
is clearly worse than its *parent rank's* value at the same step: a doubling
that is behind the half-size adapter that late buys nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from ranksweep.errors import TrialFailed
from ranksweep.storage import open_storage
from ranksweep.sweep import keys


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
        if trial.user_attrs.get(keys.CANCEL_REASON):  # the ladder stopped below this speculative rank
            return True
        if not self.compare:
            return False
        step = trial.last_step
        if step is None or step < self.after_step:
            return False
        parent_no = trial.user_attrs.get(keys.PARENT_TRIAL_NUMBER)
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
        base = trial.user_attrs.get(keys.BASE_EVAL_LOSS)
        slack = 0.0
        if base is not None and math.isfinite(float(base)):
            slack = self.margin * abs(float(base) - theirs)
        return mine - theirs > slack


class RankPruner(BasePruner):
    """The sweep's pruner: the parent-rank rule across rungs, then (in a search) successive halving among
    the trials of the trial's own rung (ladder, rank) only.

    ``rung`` is an Optuna pruner that reads the rung's trials through
    :class:`ranksweep.sweep.search.RungView`. Intermediate values are eval losses, so the rung
    pruner compares them as minimized whatever the study's direction.
    """

    def __init__(self, parent: ParentRankPruner, rung: Optional[BasePruner] = None) -> None:
        self.parent, self.rung = parent, rung

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.parent.prune(study, trial):
            return self._by(study, trial, "cancelled" if trial.user_attrs.get(keys.CANCEL_REASON) else "parent")
        if self.rung is None or trial.user_attrs.get(keys.ROLE) != "search":
            return False
        from ranksweep.sweep.search import RungView

        view = RungView(study, str(trial.user_attrs.get(keys.LADDER)), int(trial.user_attrs.get(keys.RANK, 0)),
                        direction="minimize")
        return bool(self.rung.prune(view, trial)) and self._by(study, trial, "rung")  # type: ignore[arg-type]

    @staticmethod
    def _by(study: optuna.Study, trial: FrozenTrial, who: str) -> bool:
        """Record which rule pruned the trial (``pruned_by``: parent, rung or cancelled) and say so."""
        study._storage.set_trial_user_attr(trial._trial_id, keys.PRUNED_BY, who)
        return True


def rung_pruner(kind: str, eval_every: int) -> Optional[BasePruner]:
    """Successive halving for ``sha``: promotion rungs at eval_every * 3**k steps, where a trial goes on
    only while it is in the best third of the rank's trials that reached that step. None for ``none``.

    (Optuna's HyperbandPruner is not offered: it rebuilds a full study per bracket from the storage,
    which would undo the rung's view.)"""
    if kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(eval_every, 1), reduction_factor=3)
    return None


class _Attrs:
    """A mapping read as attributes, with the TrialHandle's defaults for missing keys."""

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        from ranksweep.config import TrialHandle

        self._m, self._d = mapping, TrialHandle()

    def __getattr__(self, name: str) -> Any:
        value = self._m.get(name)
        return getattr(self._d, name) if value is None else value


class OptunaReporter:
    """The job's handle on its own Optuna trial: reports eval values, asks the pruner."""

    def __init__(self, study: optuna.Study, trial_number: int) -> None:
        self.study = study
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
        self.trial = optuna.trial.Trial(study, frozen._trial_id)

    @classmethod
    def from_handle(cls, handle: Any, max_steps: int, eval_every: int = 1) -> OptunaReporter:
        """The reporter for the trial a :class:`ranksweep.config.TrialHandle` (or its mapping) names."""
        h = handle if not isinstance(handle, Mapping) else _Attrs(handle)
        after = int(math.ceil(float(h.prune_after) * max_steps))
        storage = open_storage(str(h.storage))
        parent = ParentRankPruner(after_step=max(after, 1), margin=float(h.prune_margin),
                                  compare=h.pruner == "parent")
        pruner = RankPruner(parent, rung_pruner(str(h.rung_pruner or "none"), eval_every))
        study = optuna.load_study(study_name=str(h.study_name), storage=storage, pruner=pruner)
        return cls(study, int(h.trial_number))

    def report(self, step: int, value: float) -> None:
        with self._ours():
            self.trial.report(float(value), int(step))

    def should_prune(self) -> bool:
        return bool(self.trial.should_prune())

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set the trial's user attributes ``attrs``, each named by a :mod:`ranksweep.sweep.keys` constant."""
        with self._ours():
            for key, value in attrs.items():
                self.trial.set_user_attr(key, value)

    @contextmanager
    def _ours(self) -> Iterator[None]:
        """A write to a trial another worker finished: the job was taken over (a TrialFailed that says so)."""
        try:
            yield
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TrialFailed(self.taken_over() or f"trial {self.trial.number} has finished",
                              kind="taken_over") from None

    def taken_over(self) -> Optional[str]:
        """Why this job's trial is no longer this job's (another worker marked it failed after missing its
        heartbeat: its sweeper died or was cut off), or None while it is RUNNING."""
        t = self.study._storage.get_trial(self.trial._trial_id)
        if t.state == optuna.trial.TrialState.RUNNING:
            return None
        return (f"trial {t.number} is {t.state.name} in the study"
                + (f" ({t.user_attrs[keys.FAIL_REASON]})" if t.user_attrs.get(keys.FAIL_REASON) else "")
                + ": another worker runs its job now; this one stops")
