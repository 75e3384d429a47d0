"""The one model of a sweep's results: :class:`Trial`, :class:`Rung` and :class:`Ladder`.

A sweep is a list of ladders (one per combination of the non-rank overrides); a ladder is its base
evaluation and a list of rungs (one per rank); a rung holds its jobs: the search trials at seed 0
(one without ``hydra.sweeper.search``) and one trial per further seed, trained with the best
values the search found. The sweeper plans with this model; ``sweep_summary.json``, the text
table, the PNG, the HTML report and the W&B summary run all read it, each rung's row computed once
(:meth:`Ladder.rows`). :mod:`.reader` builds it from an Optuna study; :mod:`.conclude` fills in what
the stop rule concludes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from optuna.trial import TrialState

from ranksweep.objectives import kind_of
from ranksweep.sweep import keys
from ranksweep.sweep.rules import Comparison, Doubling, Recommendation, Step
from ranksweep.sweep.rules.share import gain_shares
from ranksweep.sweep.stats import Examples, Interval

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


class JobStatus(str, enum.Enum):
    """Where one job stands, read from all its trials (:func:`ranksweep.sweep.reader.job_status`). A ``str``:
    each compares equal to its text."""

    TODO = "todo"  # no trial yet, or only ones that are run again (a dead worker's, a preempted one)
    RUNNING = "running"
    DONE = "done"  # a trial COMPLETE or PRUNED
    FAILED = "failed"  # a real failure: final

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Trial:
    """One Optuna trial of a sweep, as the reader sees it."""

    number: int
    ladder: str
    rank: int  # 0: the untrained base
    seed: int
    state: TrialState
    value: Optional[float] = None  # the objective, COMPLETE trials only
    params: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    trial_id: int = -1  # the storage's id, for writes
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # searched numeric params: (low, high)

    @classmethod
    def from_frozen(cls, t: Any) -> Trial:
        a = dict(t.user_attrs)
        ranges = {k: (float(d.low), float(d.high)) for k, d in t.distributions.items()
                  if k not in (keys.RANK_PARAM, keys.SEED_PARAM) and hasattr(d, "low")}
        return cls(number=int(t.number), ladder=str(a.get(keys.LADDER, "?")),
                   rank=int(a.get(keys.RANK, t.params.get(keys.RANK_PARAM, 0)) or 0),
                   seed=int(a.get(keys.SEED, t.params.get(keys.SEED_PARAM, 0)) or 0), state=t.state,
                   value=float(t.value) if t.value is not None else None, params=dict(t.params), attrs=a,
                   intermediate={int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                   trial_id=int(t._trial_id), ranges=ranges)

    @property
    def role(self) -> str:
        return str(self.attrs.get(keys.ROLE) or ("base" if self.rank == 0 else "rung"))

    @property
    def slot(self) -> int:
        return int(self.attrs.get(keys.SLOT, 0) or 0)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def objective(self) -> Optional[float]:
        """The trial's objective: COMPLETE trials only (a pruned trial's partial value is not a result)."""
        ok = self.state == TrialState.COMPLETE and self.value is not None and math.isfinite(self.value)
        return self.value if ok else None

    @property
    def last_value(self) -> Optional[float]:
        """The objective, or a pruned trial's last eval (for plots, never for decisions)."""
        if self.objective is not None:
            return self.objective
        pruned = self.state == TrialState.PRUNED and self.intermediate
        return self.intermediate[max(self.intermediate)] if pruned else None

    @property
    def searched(self) -> dict[str, Any]:
        """The values this trial's search proposed (its params besides the ladder's)."""
        return {k: self.params[k] for k in self.attrs.get(keys.SEARCHED) or [] if k in self.params}

    # User attributes the sweeper and the job set, read as fields.
    failure_kind = property(lambda self: self.attrs.get(keys.FAILURE_KIND))
    # The fingerprint of the tokenised eval examples it was evaluated on ("" when not stored).
    eval_fingerprint = property(lambda self: str((self.attrs.get(keys.EVAL_EXAMPLES) or {}).get("fingerprint") or ""))
    fail_reason = property(lambda self: self.attrs.get(keys.FAIL_REASON))
    output_dir = property(lambda self: self.attrs.get(keys.OUTPUT_DIR))
    wandb_run = property(lambda self: self.attrs.get(keys.WANDB_RUN))
    pruned_by = property(lambda self: self.attrs.get(keys.PRUNED_BY))  # parent | rung | cancelled
    cancel_reason = property(lambda self: self.attrs.get(keys.CANCEL_REASON))
    parent_trial_number = property(lambda self: self.attrs.get(keys.PARENT_TRIAL_NUMBER))
    # A claim an older sweeper lost to another worker: not one of its job's trials.
    claim_lost = property(lambda self: bool(self.attrs.get(keys.CLAIM_LOST)))

    @property
    def lr(self) -> Optional[float]:
        v = self.params.get("trainer.lr", self.attrs.get(keys.LR))
        return float(v) if v is not None else None

    def number_attr(self, key: str) -> Optional[float]:
        """A finite numeric user attribute, else None."""
        try:
            f = float(self.attrs.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None

    @property
    def trained_steps(self) -> int:
        """Optimizer steps it trained: its ``steps`` attribute, else (pruned, running) its last eval step."""
        return int(self.number_attr(keys.STEPS) or max(self.intermediate or {0: 0}))

    def examples(self, objective: str) -> Optional[tuple[list[float], list[float], str]]:
        """``(num, den, fingerprint)`` of the per-example results behind ``objective``, if stored."""
        return examples_of(self.attrs.get(keys.EVAL_EXAMPLES) or {}, objective)

    def prefixes(self) -> dict[int, dict[str, Any]]:
        """A nested prescreen's stored prefixes (``keys.PRESCREEN``), by rank b; empty for any other trial."""
        got = (self.attrs.get(keys.PRESCREEN) or {}).get("prefixes") or {}
        out: dict[int, dict[str, Any]] = {}
        for b, ex in got.items() if isinstance(got, dict) else ():
            try:
                out[int(b)] = dict(ex)
            except (TypeError, ValueError):
                continue
        return dict(sorted(out.items()))


def examples_of(ex: dict[str, Any], objective: str) -> Optional[tuple[list[float], list[float], str]]:
    """``(num, den, fingerprint)`` of stored per-example results (a trial's, or a prescreen prefix's)."""
    if kind_of(objective) == "accuracy":  # one 0/1 per generated example
        num, den = ex.get("correct"), None
        den = [1.0] * len(num) if isinstance(num, list) else None
    else:
        num, den = ex.get("loss"), ex.get("tokens")
    if not isinstance(num, list) or not isinstance(den, list) or len(num) != len(den) or not num:
        return None
    return [float(x) for x in num], [float(x) for x in den], str(ex.get("fingerprint", ""))


@dataclass
class Job:
    """One job of a rung: a search slot at seed 0, or a further seed of the best values."""

    seed: int
    slot: int
    status: JobStatus
    trial: Optional[Trial] = None
    search: bool = False


BUDGET_SLOT = -1  # the slot of a budget-check job (rank r, seed 0, trained longer): no rung's search slot
PRESCREEN_SLOT = -2  # the slot of the nested-rank prescreen job (the top rank, seed 0): no rung's search slot


class PrescreenVerdict(str, enum.Enum):
    """How a nested prescreen ended (:class:`Prescreen`). A ``str``: each compares equal to its text, and
    RUNNING's is empty (false)."""

    RUNNING = ""  # it, or its confirmations, still run
    CONFIRMED = "confirmed"  # the confirmations recommend its candidate
    CONTRADICTED = "contradicted"  # they do not: the ladder went on up or down
    FAILED = "failed"  # the prescreen job failed, or stored no curve: every rank ran

    def __str__(self) -> str:
        return self.value


@dataclass
class Prescreen:
    """``hydra.sweeper.prescreen=nested``: one adapter trained at the top rank with nested ranks, read at every
    prefix b (:mod:`ranksweep.trial.nested`) on the ladder's eval examples. The stop rule's recommendation on
    that curve is the ``candidate`` rank; ``confirm`` are the ranks then trained separately around it, and
    the answer always rests on those. ``verdict``: :class:`PrescreenVerdict` (``fallback`` says how the ladder
    went on when the confirmations contradicted the candidate, or why the prescreen failed). ``agreement``
    compares the prefixes with the separately trained ranks (:func:`ranksweep.sweep.prescreen.agreement`)."""

    rank: int
    job: Job
    steps: list[Step] = field(default_factory=list)  # each prefix as the rules see it, in rank order
    candidate: Optional[int] = None
    why: str = ""  # the rule's sentence on the prefix curve
    confirm: tuple[int, ...] = ()
    trained: tuple[int, ...] = ()  # the ranks trained around its values: the confirmations, and any below them
    verdict: PrescreenVerdict = PrescreenVerdict.RUNNING
    fallback: str = ""
    doublings: list[Doubling] = field(default_factory=list)  # the rule's verdicts on the prefix curve
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def trial(self) -> Optional[Trial]:
        return self.job.trial

    @property
    def values(self) -> dict[int, float]:
        """Each prefix's value (the objective at rank b)."""
        return {s.rank: float(s.value) for s in self.steps if s.value is not None}

    @property
    def train_steps(self) -> int:
        """Optimizer steps the prescreen trained (its steps so far while it runs)."""
        t = self.trial
        return t.trained_steps if t is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """The prescreen as written to ``sweep_summary.json``."""
        t = self.trial
        return {"rank": self.rank, "values": {str(r): v for r, v in self.values.items()},
                "candidate": self.candidate, "why": self.why or None, "confirm": list(self.confirm),
                "trained": list(self.trained),
                "verdict": str(self.verdict) or None, "fallback": self.fallback or None,
                "doublings": [d.to_dict() for d in self.doublings], "steps": self.train_steps,
                "trial": t.number if t is not None else None, "status": str(self.job.status),
                "lr": t.lr if t is not None else None, "params": dict(t.searched) if t is not None else {},
                "agreement": dict(self.agreement)}


@dataclass
class BudgetCheck:
    """The budget check of a stopped ladder: the rank it recommended and its neighbour (the rank below it, or
    above the smallest), trained again at ``factor`` times the steps (``steps``), and whether the verdict
    between them holds there. ``sweep_rank`` is the rank the ladder recommended at its own steps."""

    factor: float
    steps: int
    lower: int
    upper: int
    sweep_rank: int
    jobs: list[Job] = field(default_factory=list)  # lower's, upper's
    gain: Optional[Interval] = None  # how much better upper is than lower at `steps`
    margin: Optional[float] = None
    verdict: str = ""  # holds | flips | inconclusive | failed; "" while its jobs run

    @property
    def pending(self) -> bool:
        return any(j.status in (JobStatus.TODO, JobStatus.RUNNING) for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "steps": self.steps, "ranks": [self.lower, self.upper],
                "sweep_rank": self.sweep_rank, "gain": _iv(self.gain), "margin": self.margin,
                "verdict": self.verdict or None,
                "values": {str(r): (j.trial.objective if j.trial is not None else None)
                           for r, j in zip((self.lower, self.upper), self.jobs)},
                "trials": [j.trial.number if j.trial is not None else None for j in self.jobs]}


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """A rung's value and spread: the mean of its seeds' values and their sample standard deviation (0.0 for
    one value; both None for none)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


@dataclass
class Rung:
    """One rank of a ladder. ``values`` are the finished seeds' objectives of its best values; ``mean``
    is the rung's value. Everything else describes its trials (cost, learning rates, budget)."""

    rank: int
    state: TrialState = TrialState.COMPLETE
    values: list[float] = field(default_factory=list)
    mean: Optional[float] = None
    std: Optional[float] = None
    seeds: list[int] = field(default_factory=list)
    trial_numbers: list[int] = field(default_factory=list)
    alpha: Optional[float] = None
    trainable_params: Optional[int] = None
    duration_s: Optional[float] = None
    peak_mem_gb: Optional[float] = None
    fail_reason: Optional[str] = None
    output_dirs: list[Optional[str]] = field(default_factory=list)
    wandb_runs: list[Optional[str]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rates its trials trained at
    best_params: dict[str, Any] = field(default_factory=dict)  # the searched values of its best trial
    best_lr: Optional[float] = None
    lr_at_edge: Optional[str] = None  # "low" / "high" when the best learning rate sits at the search range's edge
    supervised_tokens: Optional[int] = None
    still_falling: Optional[bool] = None
    separation_step: Optional[int] = None  # where the next rank's curve parts from this one's
    gain: Optional[Interval] = None  # improvement over the previous rank, with its interval
    vs_best: Optional[Interval] = None  # (this value - the best rank's value), paired, in objective units
    effective_rank: Optional[float] = None
    similarity: Optional[float] = None  # subspace similarity with the previous rank's adapter
    extra_energy: Optional[float] = None  # energy share of the directions beyond the previous rank
    note: str = ""
    # Not trained: the nested prescreen placed the knee above it (hydra.sweeper.prescreen); not on the curve.
    skipped: bool = False
    # The fingerprints of the eval examples its value's trials were evaluated on: one, or none when not
    # stored; several when its seeds differ (it is then compared with no other rank).
    eval_fingerprints: list[str] = field(default_factory=list)
    examples: Optional[Examples] = field(default=None, repr=False, compare=False)
    jobs: list[Job] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        mean, std = mean_std(self.values)
        if self.mean is None:
            self.mean = mean
        if self.std is None and self.mean is not None:
            self.std = std

    @property
    def trials(self) -> list[Trial]:
        return [j.trial for j in self.jobs if j.trial is not None]

    @property
    def best(self) -> Optional[Trial]:
        """The best finished search trial at seed 0 (the only trial without a search)."""
        done = [j.trial for j in self.jobs if j.search and j.trial is not None and j.trial.objective is not None]
        if not done:
            return None
        sign = -1.0 if self._direction == "minimize" else 1.0
        return max(done, key=lambda t: (sign * float(t.objective), -t.number))  # type: ignore[arg-type]

    _direction: str = field(default="minimize", repr=False, compare=False)

    @property
    def search_finished(self) -> bool:
        return all(j.status in (JobStatus.DONE, JobStatus.FAILED) for j in self.jobs if j.search)

    @property
    def finished(self) -> bool:
        """Every job that will run is done or failed: the planner may read this rung."""
        if not self.jobs:
            return False
        if not self.search_finished:
            return False
        if self.best is None:  # no seed to replicate: the further seeds never run
            return True
        return all(j.status in (JobStatus.DONE, JobStatus.FAILED) for j in self.jobs)

    @property
    def infeasible(self) -> bool:
        return bool(self.jobs) and all(j.status == JobStatus.FAILED and j.trial is not None
                                       and j.trial.failure_kind == "infeasible" for j in self.jobs if j.search)

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE and self.mean is not None

    @property
    def fingerprints(self) -> list[str]:
        """``eval_fingerprints``, or its examples' fingerprint for a rung built without trials."""
        if self.eval_fingerprints:
            return list(self.eval_fingerprints)
        return [self.examples.fingerprint] if self.examples is not None and self.examples.fingerprint else []

    @property
    def eval_fingerprint(self) -> Optional[str]:
        """The one fingerprint of the eval examples behind its value (None: not stored, or its seeds differ)."""
        fps = self.fingerprints
        return fps[0] if len(fps) == 1 else None

    def step(self) -> Step:
        return Step(self.rank, self.mean, self.examples, list(self.values), self.note, tuple(self.fingerprints))


def _iv(iv: Optional[Interval]) -> Optional[dict[str, float]]:
    return None if iv is None else {"est": iv.est, "lo": iv.lo, "hi": iv.hi}


@dataclass(frozen=True)
class Row:
    """One rung as every table of a ladder shows it, computed once (:meth:`Ladder.rows`): the summary JSON
    (:meth:`to_dict`), the text table, the model card's table and the W&B table each format these fields."""

    rank: int
    alpha: Optional[float]
    mean: Optional[float]  # the rung's value (mean over seeds) and its spread
    std: Optional[float]
    values: tuple[float, ...]
    share: Optional[float]  # its share of the gain over the base (COMPLETE rungs only; see gain_shares)
    gain: Optional[Interval]  # over the previous rank, with its interval (from the stop rule)
    vs_best: Optional[Interval]
    best_lr: Optional[float]
    lr_at_edge: Optional[str]
    lrs_tried: int  # learning rates its trials trained at
    trainable_params: Optional[int]
    duration_s: Optional[float]
    state: TrialState  # written as its name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)
    complete: bool
    reason: str  # its note, else its fail reason ("" when neither)
    fingerprints: tuple[str, ...]  # of the eval examples behind its value
    rung: Rung = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: Rung, share: Optional[float]) -> Row:
        return cls(rank=r.rank, alpha=r.alpha, mean=r.mean, std=r.std, values=tuple(r.values),
                   share=share if r.complete else None, gain=r.gain, vs_best=r.vs_best, best_lr=r.best_lr,
                   lr_at_edge=r.lr_at_edge, lrs_tried=len(r.lrs), trainable_params=r.trainable_params,
                   duration_s=r.duration_s, state=r.state, complete=r.complete, reason=r.note or r.fail_reason or "",
                   fingerprints=tuple(r.fingerprints), rung=r)

    @property
    def eval_fingerprint(self) -> Optional[str]:
        """The one fingerprint of the eval examples behind its value (None: not stored, or its seeds differ)."""
        return self.fingerprints[0] if len(self.fingerprints) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        """The rung as written to ``sweep_summary.json``."""
        r = self.rung
        return {"rank": self.rank, "alpha": self.alpha, "values": list(self.values), "mean": self.mean,
                "std": self.std, "seeds": list(r.seeds), "trial_numbers": list(r.trial_numbers),
                "trainable_params": self.trainable_params, "duration_s": self.duration_s,
                "peak_mem_gb": r.peak_mem_gb, "state": self.state.name, "fail_reason": r.fail_reason,
                "output_dirs": list(r.output_dirs), "wandb_runs": list(r.wandb_runs), "lrs": list(r.lrs),
                "best_params": dict(r.best_params), "best_lr": self.best_lr, "lr_at_edge": self.lr_at_edge,
                "supervised_tokens": r.supervised_tokens, "still_falling": r.still_falling,
                "separation_step": r.separation_step, "gain": _iv(self.gain), "vs_best": _iv(self.vs_best),
                "effective_rank": r.effective_rank, "similarity": r.similarity,
                "extra_energy": r.extra_energy, "eval_examples": r.examples.n if r.examples else None,
                "eval_fingerprint": self.eval_fingerprint, "eval_fingerprints": list(self.fingerprints),
                "note": r.note or None}


@dataclass
class Ladder:
    """One ladder: the rungs of one combination of non-rank overrides, and what they concluded."""

    key: str
    direction: str = "minimize"
    objective: str = "eval_loss"
    base: Optional[float] = None
    rungs: list[Rung] = field(default_factory=list)
    stop_reason: str = ""
    combo: tuple[str, ...] = ()
    base_status: JobStatus = JobStatus.DONE
    base_trial: Optional[Trial] = None
    done: bool = False
    stop_rank: Optional[int] = None
    recommendation: Optional[Recommendation] = None
    budget: Optional[str] = None  # why the answer is bound by the training budget, when it is
    margin: Optional[float] = None  # the margin of the recommendation, in the objective's units
    eval_set: Optional[dict[str, Any]] = None  # which examples every rung evaluated on
    comparison: Optional[Comparison] = field(default=None, repr=False, compare=False)  # the stop rule's intervals
    base_step: Optional[Step] = field(default=None, repr=False, compare=False)  # the base as the rules see it
    budget_check: Optional[BudgetCheck] = None  # the longer rerun of the recommended rank and its neighbour
    noise: Optional[str] = None  # what the intervals cover, in words
    resolved: tuple[int, ...] = ()  # ranks given hydra.sweeper.resolve_seeds more seeds (the data leaned between them)
    prescreen: Optional[Prescreen] = None  # hydra.sweeper.prescreen=nested: the prefix curve and its confirmation

    @property
    def trials(self) -> list[Trial]:
        """Every trial of the ladder: its base, its rungs' (skipped ones have none), the prescreen and the
        budget check."""
        out = [self.base_trial] if self.base_trial is not None else []
        out += [t for r in self.rungs for t in r.trials]
        out += [j.trial for j in ([self.prescreen.job] if self.prescreen is not None else [])
                + (self.budget_check.jobs if self.budget_check is not None else []) if j.trial is not None]
        return out

    @property
    def cost(self) -> dict[str, Any]:
        """What the ladder trained: optimizer steps (a pruned or running trial's steps so far) and trials, the
        prescreen's and the budget check's included, and each of those two on its own."""

        def steps(ts: Sequence[Trial]) -> int:
            return sum(t.trained_steps for t in ts if t.rank > 0)

        check = [j.trial for j in self.budget_check.jobs if j.trial is not None] if self.budget_check else []
        trained = [t for t in self.trials if t.rank > 0]
        return {"steps": steps(trained), "trials": len(trained),
                "prescreen_steps": self.prescreen.train_steps if self.prescreen is not None else 0,
                "budget_check_steps": steps(check),
                "duration_s": sum(t.number_attr(keys.DURATION_S) or 0.0 for t in self.trials)}

    @property
    def label(self) -> str:
        return self.key or "default"

    @property
    def curve(self) -> list[Rung]:
        """The rungs a reader sees: ranks with trials, up to the stop rank (speculation past it is not
        part of the curve). A rung built by hand (no jobs) is always shown."""
        return [r for r in self.rungs if not r.skipped and (r.trials if r.jobs else True)
                and (self.stop_rank is None or r.rank <= self.stop_rank)]

    @property
    def complete(self) -> list[Rung]:
        return [r for r in self.curve if r.complete]

    @property
    def budget_bound(self) -> bool:
        """The answer is bound by the training budget: the budget line says so (a verdict that holds at more
        steps, or a check still running, is a reading, not a warning)."""
        return bool(self.budget) and "bound by the training budget" in str(self.budget)

    @property
    def pending(self) -> list[int]:
        """Needed ranks not finished yet, in ladder order (empty once the ladder is done)."""
        return [] if self.done else [r.rank for r in self.rungs if not r.finished and not r.skipped]

    @property
    def kind(self) -> str:
        return kind_of(self.objective)

    def rows(self) -> list[Row]:
        """Each rung of the curve as the tables show it; the shares of the gain over the base computed here."""
        done = self.complete
        shares = dict(zip((r.rank for r in done), gain_shares(self.base, [float(r.mean) for r in done],  # type: ignore[arg-type]
                                                              self.direction)))
        return [Row.of(r, shares.get(r.rank)) for r in self.curve]

    def to_dict(self) -> dict[str, Any]:
        """The ladder as written to ``sweep_summary.json``."""
        rec = self.recommendation
        return {"key": self.key, "direction": self.direction, "objective": self.objective, "base": self.base,
                "rungs": [row.to_dict() for row in self.rows()], "stop_reason": self.stop_reason,
                "recommendation": None if rec is None else {
                    "rank": rec.rank, "knee": rec.knee, "best_rank": rec.best_rank,
                    "tolerance_abs": rec.tolerance_abs, "why": rec.why},
                "knee": rec.knee if rec else None, "budget": self.budget,
                "budget_bound": self.budget_bound, "margin": self.margin,
                "eval_set": self.eval_set,
                "budget_check": self.budget_check.to_dict() if self.budget_check is not None else None,
                # each doubling as the stop rule judged it (its gain and interval: the rung's "gain")
                "doublings": [d.to_dict() for d in self.comparison.doublings] if self.comparison else [],
                "noise": None if self.comparison is None or self.comparison.noise is None else {
                    "sd": self.comparison.noise.sd, "dof": self.comparison.noise.dof,
                    "source": self.comparison.noise.source},
                "noise_text": self.noise, "resolved": list(self.resolved),
                "prescreen": self.prescreen.to_dict() if self.prescreen is not None else None,
                "cost": self.cost}
