"""The margin rule: continue while a doubling is confidently better by more than a margin, and
recommend the smallest rank that is confidently within the margin of the best.

A doubling's improvement ``r -> 2r`` is measured in the objective's own units with a paired
bootstrap interval (:mod:`ranksweep.sweep.stats`). The ladder continues while the interval's lower
bound is above the margin; it stops after ``patience`` doublings in a row that are not (a
doubling whose trials were all pruned or failed counts as not). The recommendation is the
smallest rank whose upper bound on (its value - the best value) is within the margin.

The margin is relative by default: ``margin * |value|`` of the better rung compared (0.5% of an
eval loss of 1.76 is 0.0088 nats). It sits at the low end of the seed-to-seed spread published for
LoRA fine-tunes (0.1-0.5%, LoRA paper Table 5), so it separates what a user would notice from
what another seed would undo; with the LoRA paper's Table 18 curve it gives r=16, and with a
curve that still gains 4% a doubling it keeps climbing.

Two rungs are compared only on the same eval examples (the fingerprint of the tokenised eval set each
trial stores): a doubling between rungs evaluated on different examples gets no interval and counts
neither as a gain nor towards a stop, and the recommendation is made among the rungs of one eval set,
saying which it could not compare.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ranksweep.fmt import fmt_value
from ranksweep.sweep.ladder import Decision, Recommendation, find_knee
from ranksweep.sweep.stats import Examples, Interval, paired_difference, seed_difference


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


@dataclass(frozen=True)
class Judge:
    """How two rungs are compared: the direction, the margin and the confidence of the intervals."""

    direction: str = "minimize"
    margin: float = 0.005
    relative: bool = True
    confidence: float = 0.95
    n_boot: int = 2000

    @property
    def orient(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0

    def margin_abs(self, ref: float) -> float:
        return self.margin * abs(ref) if self.relative else self.margin

    def not_compared(self, a: Step, b: Step) -> Optional[str]:
        """Why ``a`` and ``b`` cannot be compared (they were evaluated on different eval examples), or None."""
        for s in (a, b):
            if len(s.fingerprints) > 1:
                return (f"r={s.rank}'s seeds were evaluated on different eval examples (fingerprints "
                        f"{', '.join(s.fingerprints)}): not compared")
        if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
            return (f"r={a.rank} and r={b.rank} were evaluated on different eval examples (fingerprint "
                    f"{a.fingerprint} vs {b.fingerprint}): not compared")
        return None

    def improvement(self, a: Step, b: Step) -> Optional[Interval]:
        """How much better ``b`` is than ``a`` (positive: better), with its interval; None when they were
        evaluated on different eval examples (:meth:`not_compared`): no interval, not even a point."""
        assert a.value is not None and b.value is not None
        if self.not_compared(a, b) is not None:
            return None
        if a.examples is not None and b.examples is not None and a.examples.n == b.examples.n:
            return paired_difference(a.examples, b.examples, orient=self.orient, confidence=self.confidence,
                                     n_boot=self.n_boot)
        if a.seed_values and b.seed_values:
            return seed_difference(a.seed_values, b.seed_values, orient=self.orient, confidence=self.confidence)
        est = self.orient * (b.value - a.value)
        return Interval(est, est, est)

    def better(self, x: float, y: float) -> bool:
        return self.orient * (x - y) > 0

    def margin_text(self, m: float, of: str = "the best") -> str:
        """``0.00598 (0.5% of the best)`` or ``0.001``."""
        return f"{m:.3g} ({self.margin * 100:g}% of {of})" if self.relative else f"{m:.3g}"

    def pct(self) -> str:
        return f"{self.margin * 100:g}%" if self.relative else f"{self.margin:g}"


@dataclass
class Doubling:
    """One doubling ``prev -> rank`` as the stop rule judged it."""

    prev: int
    rank: int
    gain: Optional[Interval]
    margin: Optional[float]
    above: bool
    note: str = ""
    compared: bool = True  # False: the two rungs were evaluated on different eval examples (``note`` says so)

    def text(self, pct: int) -> str:
        if not self.compared:
            return f"r={self.prev}->{self.rank}: {self.note}"
        if self.gain is None:
            return f"r={self.rank}: {self.note or 'no value'}"
        return f"r={self.prev}->{self.rank}: gain {self.gain.text(pct)} vs margin {self.margin:.3g}"


def doublings(steps: Sequence[Step], judge: Judge) -> list[Doubling]:
    """Each rung against the last earlier rung that has a value (not compared when their eval examples differ)."""
    out: list[Doubling] = []
    last: Optional[Step] = None
    for s in steps:
        if last is not None:
            if s.value is None:
                out.append(Doubling(last.rank, s.rank, None, None, False, s.note or "no finished value"))
                continue
            gain = judge.improvement(last, s)
            if gain is None:
                out.append(Doubling(last.rank, s.rank, None, None, False, judge.not_compared(last, s) or "",
                                    compared=False))
            else:
                m = judge.margin_abs(s.value if judge.better(s.value, last.value) else last.value)  # type: ignore[arg-type]
                out.append(Doubling(last.rank, s.rank, gain, m, gain.lo > m))
        if s.value is not None:
            last = s
    return out


def _tail(steps: Sequence[Step], p: int) -> Sequence[Step]:
    """The shortest suffix of ``steps`` that holds their last ``p`` doublings and the rung they start from."""
    i = max(len(steps) - 1 - p, 0)
    while i > 0 and steps[i].value is None:
        i -= 1
    return steps[i:]


def decide_margin(steps: Sequence[Step], judge: Judge, patience: int, max_rank: int, factor: int) -> Decision:
    """Stop or continue after the finished rungs ``steps`` (in rank order; the first one has a value)."""
    if not steps:
        raise ValueError("decide needs at least one finished rung")
    p = patience
    while True:  # the last `patience` doublings that were compared (on the same eval examples)
        tail = _tail(steps, p)
        ds = [d for d in doublings(tail, judge) if d.compared]
        if len(ds) >= patience or len(tail) == len(steps):
            break
        p += 1
    pct = round(judge.confidence * 100)
    if len(ds) >= patience and not any(d.above for d in ds[-patience:]):
        noun = "doubling" if patience == 1 else f"{patience} doublings"
        parts = "; ".join(d.text(pct) for d in ds[-patience:])
        return Decision(True, f"no confident gain above the margin ({judge.pct()}) for {noun}: {parts}", None, [])
    nxt = steps[-1].rank * factor
    if nxt > max_rank:
        reason = (f"reached max_rank={max_rank}" if steps[-1].rank == max_rank
                  else f"reached max_rank={max_rank} (next rank r={nxt} would exceed it)")
        return Decision(True, reason, None, [])
    return Decision(False, "continue", nxt, [])


def recommend_margin(steps: Sequence[Step], judge: Judge) -> Optional[Recommendation]:
    """The smallest rank whose upper confidence bound on (its value - the best) is within the margin.

    When no smaller rank passes that test only because the intervals are wide -- the best is not
    confidently better than a smaller rank by the margin either -- the data cannot tell those ranks
    apart, and the smallest rank that no other rank beats confidently by more than the margin is
    recommended instead, saying so (paying for a larger rank needs evidence). With narrow intervals
    the two readings agree.

    Only rungs evaluated on the same eval examples are compared: the recommendation is made among the
    largest such set (the one holding the largest rank on a tie), and says which rungs it left out.
    """
    valued = [s for s in steps if s.value is not None and math.isfinite(s.value)]
    have, left = _one_eval_set(valued)
    if not have:
        return None
    rec = _recommend(have, judge)
    if not left:
        return rec
    best = next(s for s in have if s.rank == rec.best_rank)
    parts = [f"r={s.rank} ({'its seeds differ' if len(s.fingerprints) > 1 else f'fingerprint {s.fingerprint}'})"
             for s in left]
    return dataclasses.replace(rec, why=f"{rec.why}; not compared, evaluated on different eval examples than "
                                        f"r={best.rank} (fingerprint {best.fingerprint or '-'}): {', '.join(parts)}")


def _one_eval_set(steps: Sequence[Step]) -> tuple[list[Step], list[Step]]:
    """``(kept, left out)``: the largest set of ``steps`` evaluated on one eval set (steps with no known
    fingerprint join it; a step whose seeds differ joins none)."""
    single = [s for s in steps if len(s.fingerprints) <= 1]
    keys = list(dict.fromkeys(s.fingerprint for s in single if s.fingerprint))
    kept = single
    if len(keys) > 1:
        groups = [[s for s in single if s.fingerprint in ("", k)] for k in keys]
        kept = max(groups, key=lambda g: (len(g), max(s.rank for s in g)))
    ids = {id(s) for s in kept}
    return kept, [s for s in steps if id(s) not in ids]


def _iv(judge: Judge, a: Step, b: Step) -> Interval:
    got = judge.improvement(a, b)
    assert got is not None, "compared within one eval set"
    return got


def _recommend(have: Sequence[Step], judge: Judge) -> Recommendation:
    best = have[0]
    for s in have[1:]:
        if judge.better(s.value, best.value):  # type: ignore[arg-type]
            best = s
    m = judge.margin_abs(best.value)  # type: ignore[arg-type]
    knee = find_knee([s.rank for s in have], [float(s.value) for s in have], judge.direction)  # type: ignore[arg-type]
    knee_txt = f"; the knee on log2(r) is at r={knee}" if knee is not None else ""
    pct = round(judge.confidence * 100)
    for s in have:
        if s is best:
            return _undetermined(have, best, judge, m, knee, knee_txt) or Recommendation(
                s.rank, knee, best.rank, m,
                f"r={s.rank} is the best rank ({fmt_value(s.value)}); no smaller rank is confidently within "
                f"the margin {judge.margin_text(m)} of it{knee_txt}")
        worse = _iv(judge, s, best)  # how much better the best is than s
        if worse.hi <= m:
            why = (f"r={s.rank} is at most {max(worse.hi, 0.0):.3g} worse than the best r={best.rank} "
                   f"({fmt_value(best.value)}; {pct}% upper bound), within the margin {judge.margin_text(m)}"
                   f"{knee_txt}")
            return Recommendation(s.rank, knee, best.rank, m, why)
    raise AssertionError("unreachable: the best rank is within its own margin")


def _undetermined(have: Sequence[Step], best: Step, judge: Judge, m: float, knee: Optional[int],
                  knee_txt: str) -> Optional[Recommendation]:
    """The smallest rank that no rank beats confidently by more than the margin, when it is smaller than the
    best (the best's lead is within the noise); else None."""
    for s in have:
        if s is best:
            return None
        beaten = [o for o in have if o is not s and _iv(judge, s, o).lo > judge.margin_abs(o.value)]  # type: ignore[arg-type]
        if not beaten:
            lead = _iv(judge, s, best).text(round(judge.confidence * 100))
            return Recommendation(
                s.rank, knee, best.rank, m,
                f"r={s.rank}: no rank is confidently better than it by more than the margin {judge.margin_text(m)}; "
                f"the best, r={best.rank} ({fmt_value(best.value)}), leads by {lead}, within the noise: these "
                f"ranks cannot be told apart at this budget and noise, so the smaller one{knee_txt}")
    return None
