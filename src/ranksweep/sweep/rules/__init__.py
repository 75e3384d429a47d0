"""The stop rule: when a ladder of ranks stops climbing, and which rank it recommends.

A rule is one object, like an Optuna pruner, that checks its own arguments when it is built:
:class:`~ranksweep.sweep.rules.margin.MarginRule` (the default, ``hydra.sweeper.stop_rule=margin``) or
:class:`~ranksweep.sweep.rules.share.ShareRule` (``stop_rule=share``); both implement :class:`StopRule`.
The reader (:mod:`ranksweep.sweep.reader`) asks :func:`decide` after each finished rung, and
:mod:`ranksweep.sweep.conclude` asks the rule for its recommendation and its intervals. Why these rules
and their defaults: ``docs/rank-method.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from ranksweep.sweep.stats import Examples, Interval, Noise

__all__ = ["DIRECTIONS", "Comparison", "Decision", "Doubling", "Recommendation", "Step", "StopRule", "decide",
           "orient"]

DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")


def orient(direction: str) -> float:
    """+1 where bigger is better (maximize), -1 where smaller is better (minimize)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    return 1.0 if direction == "maximize" else -1.0


@dataclass
class Step:
    """One rung as the rules see it. ``value`` is None when the rung has no finished value (every trial
    pruned or failed); ``note`` then says why."""

    rank: int
    value: Optional[float]
    examples: Optional[Examples] = None
    seed_values: list[float] = field(default_factory=list)
    note: str = ""
    # The eval examples' fingerprints of the trials behind ``value`` (empty: not known, then the examples'
    # own); more than one when its seeds were evaluated on different examples.
    fingerprints: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Its one eval fingerprint ("" when not known)."""
        if self.fingerprints:
            return self.fingerprints[0]
        return self.examples.fingerprint if self.examples is not None else ""


@dataclass
class Decision:
    """What a rule concluded after the last finished rung: ``stop``, ``reason`` in words ("continue" when not
    stopping), ``next_rank`` to train (set by :func:`decide`; None when stopping) and, from the share rule,
    each rung's gain share."""

    stop: bool
    reason: str
    next_rank: Optional[int] = None
    shares: list[Optional[float]] = field(default_factory=list)


@dataclass
class Recommendation:
    """The rank worth paying for: ``rank``; ``best_rank``, the smallest rank with the best value;
    ``tolerance_abs``, the rule's margin or tolerance in objective units; ``why``, one sentence with the
    numbers. ``knee`` is the share rule's knee of the curve (None from the margin rule). ``lean``: the larger
    rank the data lean towards without confirming it (its lead's estimate is above the margin, its interval
    reaches below): more seeds of ``rank`` and ``lean`` would settle it (``hydra.sweeper.resolve_seeds``)."""

    rank: int
    best_rank: int
    tolerance_abs: float
    why: str
    knee: Optional[int] = None
    lean: Optional[int] = None


@dataclass
class Doubling:
    """One doubling ``prev -> rank`` as a rule judged it: its gain with its interval against ``margin``."""

    prev: int
    rank: int
    gain: Optional[Interval]
    margin: Optional[float]
    above: bool
    note: str = ""
    compared: bool = True  # False: the two rungs were evaluated on different eval examples (``note`` says so)
    # Not confidently above the margin, but its estimate is: the data lean towards a gain worth having and
    # cannot confirm it. Such a doubling counts neither as a gain nor towards a stop.
    leaning: bool = False

    @property
    def verdict(self) -> Optional[str]:
        """``above`` (a confident gain worth the doubling), ``leaning`` (only its estimate is above the margin)
        or ``below`` (its estimate is not); None where there is no gain to judge."""
        if self.gain is None or not self.compared:
            return None
        return "above" if self.above else "leaning" if self.leaning else "below"

    def to_dict(self) -> dict:
        """The doubling as written to ``sweep_summary.json``."""
        return {"from": self.prev, "to": self.rank, "verdict": self.verdict, "margin": self.margin,
                "note": self.note or None}

    def text(self, pct: int) -> str:
        if not self.compared:
            return f"r={self.prev}->{self.rank}: {self.note}"
        if self.gain is None:
            return f"r={self.rank}: {self.note or 'no value'}"
        return f"r={self.prev}->{self.rank}: gain {self.gain.text(pct)} vs margin {self.margin:.3g}"


@dataclass
class Comparison:
    """The intervals behind a rule's answer, for the tables and the plots: each doubling as the rule judged it,
    each rank against the best (its value - the best's, in objective units; None where not compared), a note
    for each rung it could not compare, the recommendation's margin and the intervals' confidence."""

    doublings: list[Doubling] = field(default_factory=list)
    vs_best: dict[int, Optional[Interval]] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)
    margin: Optional[float] = None
    confidence: float = 0.95
    noise: Optional[Noise] = None  # the training noise the intervals include (None: they cover the examples only)


class StopRule(Protocol):
    """What the reader and the conclusion ask of a stop rule. ``steps`` are finished rungs in rank order;
    ``base`` is the untrained base model as a rank-0 :class:`Step` (with its per-example results), or its value
    (None: unknown)."""

    name: str  # as hydra.sweeper.stop_rule spells it

    def decide(self, steps: Sequence[Step], base: Any) -> Decision:
        """Stop (with the reason) or continue, by the rule alone (:func:`decide` adds max_rank)."""
        ...

    def recommend(self, steps: Sequence[Step], base: Any) -> Optional[Recommendation]:
        """The recommended rank among ``steps`` (None when none has a value)."""
        ...

    def compare(self, steps: Sequence[Step], rec: Optional[Recommendation]) -> Optional[Comparison]:
        """The intervals behind ``rec``, rung by rung; None for a rule that reads none."""
        ...

    def loss_margin(self, loss: float) -> Optional[float]:
        """The margin on an eval-loss curve at ``loss`` (the budget reading); None: no budget reading."""
        ...

    def describe(self, objective: str) -> list[tuple[str, str]]:
        """Its settings as ``(name, value)`` lines, for the report."""
        ...


def decide(rule: StopRule, steps: Sequence[Step], base: Any, max_rank: int, factor: int) -> Decision:
    """After the finished rungs ``steps``: the rule's stop, else the ladder's end (the next rank,
    ``steps[-1].rank * factor``, would exceed ``max_rank``), else continue with the next rank."""
    if not steps:
        raise ValueError("decide needs at least one finished rung")
    d = rule.decide(steps, base)
    if d.stop:
        return Decision(True, d.reason, None, d.shares)
    last = steps[-1].rank
    nxt = last * factor
    if nxt > max_rank:
        reason = (f"reached max_rank={max_rank}" if last == max_rank
                  else f"reached max_rank={max_rank} (next rank r={nxt} would exceed it)")
        return Decision(True, reason, None, d.shares)
    return Decision(False, "continue", nxt, d.shares)
