"""The one model of a sweep's results: :class:`Trial`, :class:`Rung` and :class:`Ladder`.

A sweep is a list of ladders (one per combination of the non-rank overrides); a ladder is its base
evaluation and a list of rungs (one per rank); a rung holds its jobs: the search trials at seed 0
(one without ``hydra.sweeper.search``) and one trial per further seed, trained with the best
values the search found. The sweeper plans with this model; ``sweep_summary.json``, the text
table, the PNG, the HTML report and the W&B summary run all read it. :mod:`.reader` builds it
from an Optuna study (:func:`read_study`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ranksweep.sweep import ladder as ladder_mod
from ranksweep.sweep.rules import Step
from ranksweep.sweep.stats import KINDS, Examples, Interval

FINISHED_STATES = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class Trial:
    """One Optuna trial of a sweep, as the reader sees it."""

    number: int
    ladder: str
    rank: int  # 0: the untrained base
    seed: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
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
                  if k not in ("rank", "seed") and hasattr(d, "low")}
        return cls(number=int(t.number), ladder=str(a.get("ladder", "?")),
                   rank=int(a.get("rank", t.params.get("rank", 0)) or 0),
                   seed=int(a.get("seed", t.params.get("seed", 0)) or 0), state=t.state.name,
                   value=float(t.value) if t.value is not None else None, params=dict(t.params), attrs=a,
                   intermediate={int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                   trial_id=int(t._trial_id), ranges=ranges)

    @property
    def role(self) -> str:
        return str(self.attrs.get("role") or ("base" if self.rank == 0 else "rung"))

    @property
    def slot(self) -> int:
        return int(self.attrs.get("slot", 0) or 0)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def objective(self) -> Optional[float]:
        """The trial's objective: COMPLETE trials only (a pruned trial's partial value is not a result)."""
        return self.value if self.state == "COMPLETE" and self.value is not None and math.isfinite(self.value) else None

    @property
    def last_value(self) -> Optional[float]:
        """The objective, or a pruned trial's last eval (for plots, never for decisions)."""
        if self.objective is not None:
            return self.objective
        return self.intermediate[max(self.intermediate)] if self.state == "PRUNED" and self.intermediate else None

    @property
    def searched(self) -> dict[str, Any]:
        """The values this trial's search proposed (its params besides the ladder's)."""
        return {k: self.params[k] for k in self.attrs.get("searched") or [] if k in self.params}

    # User attributes the sweeper and the job set, read as fields.
    failure_kind = property(lambda self: self.attrs.get("failure_kind"))
    # The fingerprint of the tokenised eval examples it was evaluated on ("" when not stored).
    eval_fingerprint = property(lambda self: str((self.attrs.get("eval_examples") or {}).get("fingerprint") or ""))
    fail_reason = property(lambda self: self.attrs.get("fail_reason"))
    output_dir = property(lambda self: self.attrs.get("output_dir"))
    wandb_run = property(lambda self: self.attrs.get("wandb_run"))

    @property
    def lr(self) -> Optional[float]:
        v = self.params.get("trainer.lr", self.attrs.get("lr"))
        return float(v) if v is not None else None

    def number_attr(self, key: str) -> Optional[float]:
        """A finite numeric user attribute, else None."""
        try:
            f = float(self.attrs.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None

    def examples(self, objective: str) -> Optional[tuple[list[float], list[float], str]]:
        """``(num, den, fingerprint)`` of the per-example results behind ``objective``, if stored."""
        ex = self.attrs.get("eval_examples") or {}
        if objective == "exact_match":
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
    status: str  # todo | running | done | failed
    trial: Optional[Trial] = None
    search: bool = False


def _std(values: Sequence[float]) -> Optional[float]:
    if not values:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


@dataclass
class Rung:
    """One rank of a ladder. ``values`` are the finished seeds' objectives of its best values; ``mean``
    is the rung's value. Everything else describes its trials (cost, learning rates, budget)."""

    rank: int
    state: str = "COMPLETE"  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
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
    # The fingerprints of the eval examples its value's trials were evaluated on: one, or none when not
    # stored; several when its seeds differ (it is then compared with no other rank).
    eval_fingerprints: list[str] = field(default_factory=list)
    examples: Optional[Examples] = field(default=None, repr=False, compare=False)
    jobs: list[Job] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mean is None and self.values:
            self.mean = sum(self.values) / len(self.values)
        if self.std is None and self.mean is not None:
            self.std = _std(self.values)

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
        return all(j.status in ("done", "failed") for j in self.jobs if j.search)

    @property
    def finished(self) -> bool:
        """Every job that will run is done or failed: the planner may read this rung."""
        if not self.jobs:
            return False
        if not self.search_finished:
            return False
        if self.best is None:  # no seed to replicate: the further seeds never run
            return True
        return all(j.status in ("done", "failed") for j in self.jobs)

    @property
    def infeasible(self) -> bool:
        return bool(self.jobs) and all(j.status == "failed" and j.trial is not None
                                       and j.trial.failure_kind == "infeasible" for j in self.jobs if j.search)

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.mean is not None

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

    def to_dict(self) -> dict[str, Any]:
        """The rung as written to ``sweep_summary.json``."""
        g = self.gain
        return {"rank": self.rank, "alpha": self.alpha, "values": list(self.values), "mean": self.mean,
                "std": self.std, "seeds": list(self.seeds), "trial_numbers": list(self.trial_numbers),
                "trainable_params": self.trainable_params, "duration_s": self.duration_s,
                "peak_mem_gb": self.peak_mem_gb, "state": self.state, "fail_reason": self.fail_reason,
                "output_dirs": list(self.output_dirs), "wandb_runs": list(self.wandb_runs), "lrs": list(self.lrs),
                "best_params": dict(self.best_params), "best_lr": self.best_lr, "lr_at_edge": self.lr_at_edge,
                "supervised_tokens": self.supervised_tokens, "still_falling": self.still_falling,
                "separation_step": self.separation_step,
                "gain": None if g is None else {"est": g.est, "lo": g.lo, "hi": g.hi},
                "vs_best": None if self.vs_best is None else {"est": self.vs_best.est, "lo": self.vs_best.lo,
                                                              "hi": self.vs_best.hi},
                "effective_rank": self.effective_rank, "similarity": self.similarity,
                "extra_energy": self.extra_energy, "eval_examples": self.examples.n if self.examples else None,
                "eval_fingerprint": self.eval_fingerprint, "eval_fingerprints": self.fingerprints,
                "note": self.note or None}


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
    base_status: str = "done"
    base_trial: Optional[Trial] = None
    done: bool = False
    stop_rank: Optional[int] = None
    shares: list[Optional[float]] = field(default_factory=list)
    recommendation: Optional[ladder_mod.Recommendation] = None
    budget: Optional[str] = None  # why the answer is bound by the training budget, when it is
    margin: Optional[float] = None  # the margin of the recommendation, in the objective's units
    eval_set: Optional[dict[str, Any]] = None  # which examples every rung evaluated on

    @property
    def label(self) -> str:
        return self.key or "default"

    @property
    def curve(self) -> list[Rung]:
        """The rungs a reader sees: ranks with trials, up to the stop rank (speculation past it is not
        part of the curve). A rung built by hand (no jobs) is always shown."""
        return [r for r in self.rungs if (r.trials if r.jobs else True)
                and (self.stop_rank is None or r.rank <= self.stop_rank)]

    @property
    def complete(self) -> list[Rung]:
        return [r for r in self.curve if r.complete]

    @property
    def pending(self) -> list[int]:
        """Needed ranks not finished yet, in ladder order (empty once the ladder is done)."""
        return [] if self.done else [r.rank for r in self.rungs if not r.finished]

    @property
    def knee(self) -> Optional[int]:
        return self.recommendation.knee if self.recommendation else None

    @property
    def kind(self) -> str:
        return KINDS.get(self.objective, "loss")

    def conclude(self, tolerance: float = 0.05, judge: Any = None) -> Ladder:
        """Fill the recommendation from the COMPLETE rungs: the margin rule with ``judge``
        (:class:`ranksweep.sweep.rules.Judge`), else the share rule with ``tolerance``."""
        from ranksweep.sweep.conclude import conclude

        return conclude(self, tolerance, judge)

    def to_dict(self) -> dict[str, Any]:
        """The ladder as written to ``sweep_summary.json``."""
        rec = self.recommendation
        return {"key": self.key, "direction": self.direction, "objective": self.objective, "base": self.base,
                "rungs": [r.to_dict() for r in self.curve], "stop_reason": self.stop_reason,
                "recommendation": None if rec is None else {
                    "rank": rec.rank, "knee": rec.knee, "best_rank": rec.best_rank,
                    "tolerance_abs": rec.tolerance_abs, "why": rec.why},
                "knee": self.knee, "budget": self.budget, "margin": self.margin, "eval_set": self.eval_set}


def read_study(study: Any, meta: Optional[dict[str, Any]] = None, keys: Sequence[str] = ()) -> list[Ladder]:
    """The ladders of an Optuna study, as the sweeper reads them (see :mod:`ranksweep.sweep.reader`)."""
    from ranksweep.sweep.reader import read_study as _read

    return _read(study, meta, keys)
