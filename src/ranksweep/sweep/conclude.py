"""What a ladder concludes: the recommended rank, each doubling's gain with its interval, and
whether the answer is bound by the training budget rather than by the adapters' capacity."""

from __future__ import annotations

from typing import Any, Optional

from ranksweep.fmt import fmt_params
from ranksweep.sweep import budget as budget_mod
from ranksweep.sweep import ladder as ladder_mod
from ranksweep.sweep.results import Ladder, Rung
from ranksweep.sweep.rules import Judge, doublings, recommend_margin
from ranksweep.sweep.stats import Interval


def conclude(lad: Ladder, tolerance: float = 0.05, judge: Optional[Judge] = None) -> Ladder:
    done = lad.complete
    if judge is None:
        lad.recommendation = (ladder_mod.recommend(lad.base, [r.rank for r in done], [float(r.mean) for r in done],
                                                   lad.direction, tolerance=tolerance) if done else None)
        return lad
    steps = [r.step() for r in lad.curve]
    by_rank = {r.rank: r for r in lad.curve}
    for d in doublings(steps, judge):
        by_rank[d.rank].gain = d.gain
        r = by_rank[d.rank]
        if not d.compared and "different eval examples" not in r.note:  # no interval across eval sets: say why
            r.note = f"{r.note}; {d.note}" if r.note else d.note
    lad.recommendation = recommend_margin([r.step() for r in done], judge)
    lad.margin = lad.recommendation.tolerance_abs if lad.recommendation else None
    if lad.recommendation is not None:
        best = by_rank[lad.recommendation.best_rank]
        for r in done:  # each rank against the best, paired: the error bars of the curve
            if r is best:
                r.vs_best = Interval(0.0, 0.0, 0.0)
            else:
                w = judge.improvement(r.step(), best.step())  # how much better the best is, oriented
                if w is None:  # evaluated on other eval examples than the best: no interval
                    r.vs_best = None
                    continue
                sign = judge.orient  # back to objective units: value(r) - value(best)
                lo, hi = sorted((-sign * w.lo, -sign * w.hi))
                r.vs_best = Interval(-sign * w.est, lo, hi)
    _curves(lad, judge)
    lad.budget = _budget(lad, judge)
    lad.eval_set = _eval_set(done)
    return lad


def _eval_set(done: list[Rung]) -> Optional[dict[str, Any]]:
    """Which eval examples the rungs were evaluated on: ``{"n", "fingerprint"}``, with ``fingerprints`` (each
    rank's) and a ``note`` when they differ (those rungs are not compared)."""
    ex = [r for r in done if r.examples is not None]
    if not ex:
        return None
    out: dict[str, Any] = {"n": ex[0].examples.n, "fingerprint": ex[0].eval_fingerprint}  # type: ignore[union-attr]
    by_rank = {r.rank: r.fingerprints for r in done if r.fingerprints}
    if len({fp for fps in by_rank.values() for fp in fps}) > 1:
        out["fingerprints"] = {str(rank): ", ".join(fps) for rank, fps in by_rank.items()}
        out["note"] = ("the ranks were evaluated on different eval examples (" + "; ".join(
            f"r={rank}: {', '.join(fps)}" for rank, fps in by_rank.items()) + "): those are not compared")
    return out


def _loss_margin(judge: Judge, loss: float) -> float:
    """The margin on the eval-loss curves (intermediate values are losses whatever the objective)."""
    return judge.margin * abs(loss) if judge.relative or judge.direction == "maximize" else judge.margin


def _curve(r: Rung) -> dict[int, float]:
    best = r.best
    return dict(best.intermediate) if best is not None else {}


def _curves(lad: Ladder, judge: Judge) -> None:
    rungs = [r for r in lad.curve if r.complete]
    for i, r in enumerate(rungs):
        c = _curve(r)
        if c:
            r.still_falling = budget_mod.still_falling(c, _loss_margin(judge, c[max(c)]))
        if i + 1 < len(rungs):
            nxt = _curve(rungs[i + 1])
            if c and nxt:
                r.separation_step = budget_mod.separation_step(c, nxt, _loss_margin(judge, c[max(c)]))


def _budget(lad: Ladder, judge: Judge) -> Optional[str]:
    """The budget verdict: None when the recommendation can stand as a capacity answer."""
    rec = lad.recommendation
    if rec is None:
        return None
    top = [r for r in lad.complete if r.rank >= rec.rank]
    parts: list[str] = []
    if top and all(r.still_falling for r in top):
        factors = [budget_mod.more_steps(_curve(r), _loss_margin(judge, min(_curve(r).values()))) for r in top]
        steps = max(max(_curve(r)) for r in top)
        known = [f for f in factors if f is not None]
        more = (f"about {max(known):.1f}x the steps (~{round(max(known) * steps)} instead of {steps}) would bring "
                "each eval interval's gain under the margin" if known and len(known) == len(factors)
                else "the curves are not yet bending, so at least 2x the steps")
        ranks = ", ".join(f"r={r.rank}" for r in top)
        parts.append(f"bound by the training budget: {ranks} still improved by more than the margin over their "
                     f"last eval interval; {more}")
    r0 = lad.complete[0] if lad.complete else None
    if r0 is not None and r0.supervised_tokens and r0.trainable_params and r0.supervised_tokens < r0.trainable_params:
        parts.append(f"{fmt_params(r0.supervised_tokens)} supervised tokens against {fmt_params(r0.trainable_params)} "
                     f"adapter parameters at r={r0.rank}: capacity is unlikely to bind (LoRA keeps up while its "
                     "parameters exceed the completion tokens trained on)")
    return "; ".join(parts) or None


def annotate(lad: Ladder, evidence: Any) -> None:
    """Attach the adapters' own evidence (:mod:`ranksweep.evidence`) to each rung, where readable."""
    prev: Optional[Rung] = None
    for r in lad.complete:
        if prev is not None and r.output_dirs and prev.output_dirs:
            got = evidence(prev.output_dirs[0], r.output_dirs[0])
            if got is not None:
                r.similarity, r.extra_energy = got
        prev = r
