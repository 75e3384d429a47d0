"""The margin rule, the default stop rule: continue while a doubling is confidently better by more than a
margin, or its estimate is; recommend the smallest rank that is confidently within the margin of the best.

A doubling's gain ``r -> 2r`` is a paired bootstrap interval in the objective's own units
(:mod:`ranksweep.sweep.stats`). Two rungs are compared only on the same eval examples (the fingerprint
each trial stores): a doubling between rungs evaluated on different examples gets no interval and counts
neither as a gain nor towards a stop, and the recommendation is made among the rungs of one eval set.
Why a margin, and why 0.5% of the value: ``docs/rank-method.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ranksweep.fmt import fmt_value
from ranksweep.sweep.rules import Comparison, Decision, Doubling, Recommendation, Step, orient
from ranksweep.sweep.stats import Interval, Noise, paired_difference, pooled_noise, seed_difference, with_training_noise

__all__ = ["MarginRule"]


@dataclass(frozen=True)
class MarginRule:
    """Stop after ``patience`` doublings that are not confidently above the margin (one whose estimate is above
    it is not counted: the data lean towards a gain). ``margin`` is relative (``margin * |value|`` of the
    better rung) or, with ``relative=False``, in the objective's units; intervals are at ``confidence`` from
    ``n_boot`` bootstrap replicates."""

    direction: str = "minimize"
    margin: float = 0.005
    relative: bool = True
    confidence: float = 0.95
    n_boot: int = 2000
    patience: int = 2
    # The seed-to-seed standard deviation of one trial's value when it is known (a simulation, a benchmark),
    # else None: measured from the rungs that ran several seeds (hydra.sweeper.noise_seeds, seeds_per_rank).
    known_noise: Optional[float] = None
    name: ClassVar[str] = "margin"

    def __post_init__(self) -> None:
        orient(self.direction)
        _require(isinstance(self.margin, (int, float)) and not isinstance(self.margin, bool)
                 and math.isfinite(self.margin) and self.margin >= 0, "margin", "a finite number >= 0", self.margin)
        _require(isinstance(self.relative, bool), "relative", "True or False", self.relative)
        _require(isinstance(self.confidence, (int, float)) and 0.5 <= self.confidence < 1, "confidence",
                 "in [0.5, 1)", self.confidence)
        _require(_is_int(self.n_boot) and self.n_boot >= 1, "n_boot", "an integer >= 1", self.n_boot)
        _require(_is_int(self.patience) and self.patience >= 1, "patience", "an integer >= 1", self.patience)
        _require(self.known_noise is None or (isinstance(self.known_noise, (int, float)) and
                                              math.isfinite(self.known_noise) and self.known_noise >= 0),
                 "known_noise", "None or a finite number >= 0", self.known_noise)

    @classmethod
    def from_settings(cls, s: Any) -> MarginRule:
        """The rule of :class:`~ranksweep.sweep.settings.SweepSettings` ``s``."""
        return cls(s.direction, s.margin, s.margin_type == "relative", s.confidence, s.bootstrap, s.patience)

    # ------------------------------------------------------------------ comparing two rungs

    @property
    def orient(self) -> float:
        return orient(self.direction)

    def margin_abs(self, ref: float) -> float:
        return self.margin * abs(ref) if self.relative else self.margin

    def loss_margin(self, loss: float) -> float:
        """The margin on the eval-loss curves (intermediate values are losses whatever the objective)."""
        return self.margin * abs(loss) if self.relative or self.direction == "maximize" else self.margin

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

    def noise(self, steps: Sequence[Step]) -> Optional[Noise]:
        """The training noise of one trial's value: given (``known_noise``), else pooled over the rungs that ran
        several seeds; then each doubling that is confidently *negative* with it (more rank cannot lose
        capacity, so such a difference is noise the seeds did not show) joins it as one more draw. None when
        nothing measured it: no interval then covers the training noise, and no verdict is confident."""
        if self.known_noise is not None:
            return Noise(float(self.known_noise) ** 2, math.inf, "given")
        noise = pooled_noise([(f"r={s.rank}", s.seed_values) for s in steps if s.value is not None])
        if noise is None:
            return None
        negative = [d for d in self._doublings(steps, noise) if d.gain is not None and d.gain.hi < 0]
        if not negative:
            return noise
        seeds = {s.rank: max(len(s.seed_values), 1) for s in steps}
        num, dof = noise.var * noise.dof, noise.dof
        for d in negative:
            num += d.gain.est ** 2 / (1.0 / seeds[d.prev] + 1.0 / seeds[d.rank])  # type: ignore[union-attr]
            dof += 1
        worse = ", ".join(f"r={d.prev}->{d.rank}" for d in negative)
        return Noise(num / dof, dof, f"{noise.source} and the confidently negative doubling(s) {worse}",
                     tuple((d.prev, d.rank) for d in negative))

    def improvement(self, a: Step, b: Step, noise: Optional[Noise] = None) -> Optional[Interval]:
        """How much better ``b`` is than ``a`` (positive: better), with its interval: over the eval examples
        (paired bootstrap) and, with ``noise``, the training noise of each value; None when they were
        evaluated on different eval examples (:meth:`not_compared`): no interval, not even a point. A rung of
        rank 0 (the untrained base) has no training noise."""
        assert a.value is not None and b.value is not None
        if self.not_compared(a, b) is not None:
            return None
        if a.examples is not None and b.examples is not None and a.examples.n == b.examples.n:
            iv = paired_difference(a.examples, b.examples, orient=self.orient, confidence=self.confidence,
                                   n_boot=self.n_boot, resample_seeds=noise is None)
            n_a = n_b = min(a.examples.seeds, b.examples.seeds)
        elif a.seed_values and b.seed_values:
            if noise is None:
                return seed_difference(a.seed_values, b.seed_values, orient=self.orient, confidence=self.confidence)
            n_a, n_b = len(a.seed_values), len(b.seed_values)
            est = self.orient * (sum(b.seed_values) / n_b - sum(a.seed_values) / n_a)
            iv = Interval(est, est, est)
        else:
            est = self.orient * (b.value - a.value)
            iv, n_a, n_b = Interval(est, est, est), 1, 1
        if noise is None:
            return iv
        return with_training_noise(iv, noise, math.inf if a.rank == 0 else n_a, math.inf if b.rank == 0 else n_b,
                                   self.confidence)

    def better(self, x: float, y: float) -> bool:
        return self.orient * (x - y) > 0

    def margin_text(self, m: float, of: str = "the best") -> str:
        """``0.00598 (0.5% of the best)`` or ``0.001``."""
        return f"{m:.3g} ({self.margin * 100:g}% of {of})" if self.relative else f"{m:.3g}"

    def pct(self) -> str:
        return f"{self.margin * 100:g}%" if self.relative else f"{self.margin:g}"

    def doublings(self, steps: Sequence[Step]) -> list[Doubling]:
        """Each rung against the last earlier rung that has a value, with the training noise ``steps`` show."""
        return self._doublings(steps, self.noise(steps))

    def _doublings(self, steps: Sequence[Step], noise: Optional[Noise]) -> list[Doubling]:
        """Not compared (so counted neither as a gain nor towards a stop): a rung without a value (every
        trial pruned or failed: no evidence either way), or one evaluated on other eval examples. Without a
        measure of the training noise no doubling is confidently above the margin."""
        out: list[Doubling] = []
        last: Optional[Step] = None
        for s in steps:
            if last is not None:
                if s.value is None:
                    out.append(Doubling(last.rank, s.rank, None, None, False,
                                        f"{s.note or 'no finished value'}: no evidence either way, not counted",
                                        compared=False))
                    continue
                gain = self.improvement(last, s, noise)
                if gain is None:
                    out.append(Doubling(last.rank, s.rank, None, None, False, self.not_compared(last, s) or "",
                                        compared=False))
                else:
                    m = self.margin_abs(s.value if self.better(s.value, last.value) else last.value)  # type: ignore[arg-type]
                    above = noise is not None and gain.lo > m
                    out.append(Doubling(last.rank, s.rank, gain, m, above, leaning=not above and gain.est > m))
            if s.value is not None:
                last = s
        return out

    # ------------------------------------------------------------------ the rule

    def decide(self, steps: Sequence[Step], base: Any = None) -> Decision:
        """Stop when none of the last ``patience`` counted doublings is confidently above the margin. Not
        counted, so the ladder goes on: a rung whose trials were all pruned or failed (no evidence), a
        doubling between rungs on different eval examples, and one whose estimate is above the margin
        though its interval reaches below it (the data lean towards a gain they cannot confirm: a saturated
        task's ladder once stopped at r=4 on two of them, when r=8 was better by 0.12)."""
        if not steps:
            raise ValueError("decide needs at least one finished rung")
        noise = self.noise(steps)  # from every rung, not only the last ones
        p = self.patience
        while True:  # the last `patience` counted doublings (compared on the same eval examples)
            tail = _tail(steps, p)
            ds = [d for d in self._doublings(tail, noise) if d.compared and not d.leaning]
            if len(ds) >= self.patience or len(tail) == len(steps):
                break
            p += 1
        if len(ds) >= self.patience and not any(d.above for d in ds[-self.patience:]):
            noun = "doubling" if self.patience == 1 else f"{self.patience} doublings"
            parts = "; ".join(d.text(round(self.confidence * 100)) for d in ds[-self.patience:])
            return Decision(True, f"no confident gain above the margin ({self.pct()}) for {noun}: {parts}")
        return Decision(False, "continue")

    def recommend(self, steps: Sequence[Step], base: Any = None) -> Optional[Recommendation]:
        """The smallest rank whose upper confidence bound on (its value - the best) is within the margin.

        When no smaller rank passes that test only because the intervals are wide -- the best is not
        confidently better than a smaller rank by the margin either -- the data cannot tell those ranks
        apart, and the smallest rank that no other rank beats confidently by more than the margin is
        recommended, saying so (paying for a larger rank needs evidence). When not even the best rank beats
        the untrained ``base`` (a :class:`Step` of rank 0, or its value) confidently by the margin, the
        smallest rank is recommended and the reason says that fine-tuning does not help at this budget.
        Only rungs evaluated on the same eval examples are compared: the largest such set, saying which
        rungs it left out."""
        valued = [s for s in steps if s.value is not None and math.isfinite(s.value)]
        have, left = _one_eval_set(valued)
        if not have:
            return None
        noise = self.noise(steps)
        best = have[0]
        for s in have[1:]:
            if self.better(s.value, best.value):  # type: ignore[arg-type]
                best = s
        m = self.margin_abs(best.value)  # type: ignore[arg-type]
        over_base = self._over_base(best, base, noise)
        if over_base is not None and not over_base.lo > m:
            return Recommendation(have[0].rank, best.rank, m, self._why("no gain", have[0], best, m, over_base, left,
                                                                       noise, base))
        pick, why, iv = self._choose(have, best, m, noise)
        lean = best.rank if why == "undetermined" and iv is not None and iv.est > m else None
        return Recommendation(pick.rank, best.rank, m, self._why(why, pick, best, m, iv, left, noise), lean=lean)

    def _over_base(self, best: Step, base: Any, noise: Optional[Noise]) -> Optional[Interval]:
        """How much the best rank gains over the untrained base, with the training noise; None when the base or
        the noise is unknown (then nothing is concluded about the base)."""
        if noise is None or base is None:
            return None
        step = base if isinstance(base, Step) else Step(0, float(base))
        if step.value is None or not math.isfinite(step.value):
            return None
        return self.improvement(dataclasses.replace(step, rank=0), best, noise)

    def _choose(self, have: Sequence[Step], best: Step, m: float,
                noise: Optional[Noise]) -> tuple[Step, str, Optional[Interval]]:
        """``(the recommended rung, which reason, its interval against the best)``. Without a measure of the
        training noise no rank is confidently within the margin of another, nor confidently better."""
        for s in have:
            if s is best or noise is None:
                break
            worse = self._iv(s, best, noise)  # how much better the best is than s
            if worse.hi <= m:
                return s, "within", worse
        for s in have:  # no smaller rank confidently within the margin: is one that no rank beats confidently?
            if s is best:
                break
            if noise is None or not any(self._iv(s, o, noise).lo > self.margin_abs(o.value)  # type: ignore[arg-type]
                                        for o in have if o is not s):
                return s, "undetermined", self._iv(s, best, noise)
        return best, "best", None

    def _why(self, why: str, s: Step, best: Step, m: float, iv: Optional[Interval], left: Sequence[Step],
             noise: Optional[Noise], base: Any = None) -> str:
        """The recommendation in one sentence: every text the margin rule recommends with is written here."""
        pct = round(self.confidence * 100)
        if why == "no gain":
            assert iv is not None
            b = base.value if isinstance(base, Step) else base
            text = (f"no rank beats the untrained base ({fmt_value(b)}) confidently by more than the margin "
                    f"{self.margin_text(m)}: the best, r={best.rank} ({fmt_value(best.value)}), gains {iv.text(pct)} "
                    f"over it, so fine-tuning does not help at this budget; if you train anyway, the smallest rank, "
                    f"r={s.rank}")
        elif why == "within":
            assert iv is not None
            text = (f"r={s.rank} is at most {max(iv.hi, 0.0):.3g} worse than the best r={best.rank} "
                    f"({fmt_value(best.value)}; {pct}% upper bound), within the margin {self.margin_text(m)}")
        elif why == "undetermined":
            assert iv is not None
            text = (f"r={s.rank}: no rank is confidently better than it by more than the margin "
                    f"{self.margin_text(m)}; the best, r={best.rank} ({fmt_value(best.value)}), leads by "
                    f"{iv.text(pct)}, within the noise: these ranks cannot be told apart at this budget and noise, "
                    "so the smaller one")
        else:
            text = (f"r={s.rank} is the best rank ({fmt_value(s.value)}); no smaller rank is confidently within "
                    f"the margin {self.margin_text(m)} of it")
        if noise is None:
            text += ("; the intervals cover the eval examples only (no rung ran a second seed to measure the training "
                     "noise), so no verdict is confident")
        if left:
            parts = [f"r={x.rank} ({'its seeds differ' if len(x.fingerprints) > 1 else f'fingerprint {x.fingerprint}'})"
                     for x in left]
            text += (f"; not compared, evaluated on different eval examples than r={best.rank} (fingerprint "
                     f"{best.fingerprint or '-'}): {', '.join(parts)}")
        return text

    def compare(self, steps: Sequence[Step], rec: Optional[Recommendation]) -> Comparison:
        """Each doubling's gain, and each rung with a value against the recommendation's best rank: paired,
        in objective units (its value - the best's); None where evaluated on other eval examples."""
        noise = self.noise(steps)
        ds = self._doublings(steps, noise)
        by_rank = {s.rank: s for s in steps}
        notes = {d.rank: d.note for d in ds  # no interval across eval sets: the rung says why, once
                 if not d.compared and "different eval examples" not in by_rank[d.rank].note
                 and by_rank[d.rank].value is not None}
        for prev, rank in noise.negatives if noise is not None else ():  # more rank cannot lose capacity
            notes[rank] = (f"r={rank} was confidently worse than r={prev} with the seeds' noise alone: more rank "
                           "cannot lose capacity, so this is training noise (or the learning rate) the seeds did not "
                           "show; it joins the noise estimate, widening every interval")
        vs_best: dict[int, Optional[Interval]] = {}
        if rec is not None:
            best = by_rank[rec.best_rank]
            for s in steps:
                if s.value is None:
                    continue
                if s is best:
                    vs_best[s.rank] = Interval(0.0, 0.0, 0.0)
                    continue
                w = self.improvement(s, best, noise)  # how much better the best is, oriented
                if w is None:
                    vs_best[s.rank] = None
                    continue
                sign = self.orient  # back to objective units: value(s) - value(best)
                lo, hi = sorted((-sign * w.lo, -sign * w.hi))
                vs_best[s.rank] = Interval(-sign * w.est, lo, hi)
        return Comparison(ds, vs_best, notes, rec.tolerance_abs if rec else None, self.confidence, noise)

    def describe(self, objective: str) -> list[tuple[str, str]]:
        margin = (f"{self.margin * 100:g}% of the best rank's value (relative)" if self.relative
                  else f"{self.margin:g} {objective} (absolute)")
        return [("stop rule", "margin"), ("margin", margin), ("confidence", f"{self.confidence * 100:g}%"),
                ("bootstrap replicates", str(self.n_boot)), ("patience", f"{self.patience} doubling(s)")]

    def _iv(self, a: Step, b: Step, noise: Optional[Noise]) -> Interval:
        got = self.improvement(a, b, noise)
        assert got is not None, "compared within one eval set"
        return got


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, name: str, what: str, got: object) -> None:
    if not ok:
        raise ValueError(f"MarginRule: {name} must be {what}, got {got!r}")


def _tail(steps: Sequence[Step], p: int) -> Sequence[Step]:
    """The shortest suffix of ``steps`` that holds their last ``p`` doublings and the rung they start from."""
    i = max(len(steps) - 1 - p, 0)
    while i > 0 and steps[i].value is None:
        i -= 1
    return steps[i:]


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
