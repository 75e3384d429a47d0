"""Claiming jobs: under the study lock, read the ladders, plan, and create this worker's next trials.

Holding a short lock on the storage while planning and creating trials is what makes "no
(ladder, rank, seed) runs twice" hold with any number of workers on one study.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from ranksweep.locks import study_lock
from ranksweep.sweep import keys, plan
from ranksweep.sweep.heartbeat import fail_stale, first_beat
from ranksweep.sweep.prescreen import centers, narrow
from ranksweep.sweep.reader import Spec, index_trials, read_ladders
from ranksweep.sweep.record import check_failures
from ranksweep.sweep.results import Ladder, Trial
from ranksweep.sweep.search import RungView, propose
from ranksweep.sweep.settings import SweepSettings
from ranksweep.urls import reveal

log = logging.getLogger("ranksweep.sweep")

RANK_DIST = IntDistribution(0, 1 << 20)
SEED_DIST = IntDistribution(0, 1 << 16)


@dataclass
class Claim:
    """A job this worker created a trial for and will run."""

    item: plan.Item
    trial: optuna.trial.Trial
    parent: Optional[int] = None
    values: dict[str, Any] = field(default_factory=dict)  # searched values

    @property
    def subdir(self) -> str:
        return f"trial-{self.trial.number:04d}-{self.item.subdir}"


class Claimer:
    def __init__(self, study: optuna.Study, storage: Any, settings: SweepSettings, spec: Spec,
                 axes: dict[str, CategoricalDistribution], sweep_dir: Path,
                 infeasible: Callable[[plan.Item], Optional[str]], search: Optional[dict[str, Any]] = None) -> None:
        self.study, self.storage, self.s, self.spec = study, storage, settings, spec
        self.axes, self.sweep_dir, self.infeasible = axes, sweep_dir, infeasible
        self.search = search or {}  # name -> Optuna distribution
        self.skipped = False  # the last claim recorded a rank that does not fit

    def read(self) -> tuple[list[Trial], list[Ladder]]:
        trials = [Trial.from_frozen(t) for t in self.study.get_trials(deepcopy=False)]
        return trials, read_ladders(trials, self.spec)

    def claim(self, free: int) -> tuple[list[Claim], bool]:
        """Up to ``free`` new claims, and whether needed work is running on another worker."""
        self.skipped = False
        with study_lock(reveal(self.s.storage_url), self.s.study_name):  # the URL is masked (urls.conceal)
            fail_stale(self.study, self.storage, self.s.grace_period)
            trials, ladders = self.read()
            self.earlier = index_trials(trials)  # every attempt per job, dead workers' included
            check_failures(trials, self.s.max_failure_rate)
            for lad in ladders:  # the stop rule fired: cancel the speculative ranks it made unnecessary
                self._cancel(lad)
            cands, running = plan.candidates(ladders, self.s.parallel, searching=bool(self.search),
                                             ranks=self.spec.ranks)
            by_key = {lad.key: lad for lad in ladders}
            claims: list[Claim] = []
            created: dict[tuple[str, int, int, int], int] = {}
            blocked: dict[str, int] = {}  # ladder -> a rank that does not fit: larger ones need more
            for item, _ in cands:
                if len(claims) >= free:
                    break
                if item.rank > blocked.get(item.ladder, 1 << 30):
                    continue
                reason = self.infeasible(item)
                claim = self._create(item, by_key[item.ladder], created)
                if reason is None:
                    claims.append(claim)
                    continue
                blocked[item.ladder] = item.rank  # recorded, not run: the ladder ends at the last rank that fits
                claim.trial.set_user_attr(keys.FAILURE_KIND, "infeasible")
                claim.trial.set_user_attr(keys.FAIL_REASON, reason)
                self.study.tell(claim.trial, state=TrialState.FAIL)
                log.warning("trial %d (%s r=%d) skipped: %s", claim.trial.number, item.ladder, item.rank, reason)
                self.skipped = True
        return claims, running

    def _cancel(self, lad: Ladder) -> None:
        for t in plan.unneeded_running(lad):
            if keys.CANCEL_REASON not in t.attrs:
                self.storage.set_trial_user_attr(t.trial_id, keys.CANCEL_REASON,
                                                 f"not needed: the ladder stopped at r={lad.stop_rank}")
                log.info("trial %d (r=%s) cancelled: the ladder stopped at r=%s", t.number, t.rank, lad.stop_rank)

    def _parent(self, item: plan.Item, lad: Ladder, created: dict) -> Optional[int]:
        if item.rank == 0 or item.rank == self.spec.ranks[0] or item.slot < 0:  # a budget check, a prescreen
            return None
        t = plan.parent_of(lad, item, self.spec.ranks)
        if t is not None:
            return t.number
        prev = (item.ladder, self.spec.ranks[self.spec.ranks.index(item.rank) - 1], item.seed, 0)
        return created.get(prev)

    def _create(self, item: plan.Item, lad: Ladder, created: dict) -> Claim:
        trial = self.study.ask()
        tid = trial._trial_id
        first_beat(self.storage, tid)  # this worker dying before the launch leaves a trial that goes stale
        values = dict(c.split("=", 1) for c in item.combo)
        for k, dist in self.axes.items():
            self.storage.set_trial_param(tid, k, dist.to_internal_repr(values[k]), dist)
        self.storage.set_trial_param(tid, keys.RANK_PARAM, float(item.rank), RANK_DIST)
        self.storage.set_trial_param(tid, keys.SEED_PARAM, float(item.seed), SEED_DIST)
        values = self._searched(item, trial, lad)
        claim = Claim(item, trial, self._parent(item, lad, created), values)
        attrs: dict[str, Any] = {keys.LADDER: item.ladder, keys.RANK: item.rank, keys.SEED: item.seed,
                                 keys.SLOT: item.slot,
                                 keys.ROLE: item.role,
                                 keys.SEARCHED: sorted(values),
                                 keys.WORKER: f"{socket.gethostname()}:{os.getpid()}",
                                 keys.OUTPUT_DIR: str(self.sweep_dir / claim.subdir)}
        if claim.parent is not None:
            attrs[keys.PARENT_TRIAL_NUMBER] = claim.parent
        if lad.base is not None:
            attrs[keys.BASE_VALUE] = lad.base
            if lad.base_trial is not None and lad.base_trial.attrs.get(keys.EVAL_LOSS) is not None:
                attrs[keys.BASE_EVAL_LOSS] = lad.base_trial.attrs[keys.EVAL_LOSS]  # the pruner's reference
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        created[item.key] = trial.number
        log.info("trial %d: %s %s seed %d%s", trial.number, item.ladder,
                 "base (untrained)" if item.rank == 0 else f"r={item.rank}", item.seed,
                 "".join(f" {k}={v:.3g}" if isinstance(v, float) else f" {k}={v}" for k, v in values.items()))
        return claim

    def _searched(self, item: plan.Item, trial: optuna.trial.Trial, lad: Ladder) -> dict[str, Any]:
        """The searched values of this job: an earlier attempt's (a job run again after its worker died
        resumes that attempt's checkpoints, so it must train the same values), proposed by the rung's
        sampler, the previous rank's best (first trial of a rank), or the search's best (a further seed)."""
        if item.rank == 0 or not self.search:
            return {}
        before = next((t.searched for t in getattr(self, "earlier", {}).get(item.key, []) if t.searched), None)
        if before:
            item = plan.Item(item.ladder, item.combo, item.rank, item.seed, item.slot, False, dict(before))
        elif item.prescreen:  # one run at the top rank: the middle of every range
            item = plan.Item(item.ladder, item.combo, item.rank, item.seed, item.slot, False, centers(self.search))
        if not item.search:  # a further seed repeats the best values, recorded with the same distributions
            for name, value in item.params.items():
                dist = self.search[name]
                self.storage.set_trial_param(trial._trial_id, name, dist.to_internal_repr(value), dist)
            return dict(item.params)
        view = RungView(self.study, item.ladder, item.rank)
        if item.params:  # a prescreen's confirmation: its values first, then a narrow search around them
            return propose(self.study, trial._trial_id, view, narrow(self.search, item.params), self.s.sampler,
                           self.s.confirm_budget, warm=item.params if item.slot == 0 else None)
        return propose(self.study, trial._trial_id, view, self.search, self.s.sampler, self.s.search_budget,
                       warm=plan.warm_start(lad, item, self.spec.ranks))
