"""What a ladder concludes: the recommended rank, each doubling's gain with its interval, and
whether the answer is bound by the training budget rather than by the adapters' capacity.

The rule (:mod:`ranksweep.sweep.rules`) gives the recommendation and its intervals; this module puts
them on the ladder and its rungs, and writes the budget verdict (:func:`_budget`)."""

from __future__ import annotations

from typing import Any, Optional

from ranksweep.fmt import fmt_params, fmt_value
from ranksweep.sweep import budget as budget_mod
from ranksweep.sweep.results import Ladder, Rung, Trial
from ranksweep.sweep.rules import Recommendation, Step, StopRule
from ranksweep.sweep.stats import Examples


def conclude(lad: Ladder, rule: StopRule) -> Ladder:
    """Fill ``lad``'s recommendation from its COMPLETE rungs and, where the rule reads intervals, each rung's
    gain over the previous rank and its difference to the best, the budget verdict and the eval set."""
    done = lad.complete
    base = lad.base_step if lad.base_step is not None else lad.base
    lad.recommendation = rule.recommend([r.step() for r in done], base)
    cmp = lad.comparison = rule.compare([r.step() for r in lad.curve], lad.recommendation)
    if cmp is None:  # a rule without intervals: nothing more to read
        return lad
    by_rank = {r.rank: r for r in lad.curve}
    for d in cmp.doublings:
        by_rank[d.rank].gain = d.gain
    for rank, note in cmp.notes.items():  # e.g. no interval across eval sets: the rung says why
        r = by_rank[rank]
        r.note = f"{r.note}; {note}" if r.note else note
    for r in done:  # each rank against the best: the error bars of the curve
        r.vs_best = cmp.vs_best.get(r.rank)
    lad.margin = cmp.margin
    top = _top_may_bind(lad, cmp.doublings, round(getattr(rule, "confidence", 0.95) * 100))
    if top is not None:
        rec = lad.recommendation
        lad.recommendation = Recommendation(rec.rank, rec.best_rank, rec.tolerance_abs, f"{rec.why}; {top}", rec.knee)
    lad.noise = _noise(cmp.noise, [r.step() for r in done])
    _curves(lad, rule)
    lad.budget = _budget(lad, rule)
    lad.eval_set = _eval_set(done)
    return lad


def _top_may_bind(lad: Ladder, doublings: Any, pct: int) -> Optional[str]:
    """When the ladder ran out of ranks and recommends its top one while the last doubling still gained (or
    leaned towards a gain), a larger rank may pay: the sentence that says so, else None."""
    rec = lad.recommendation
    if rec is None or not lad.stop_reason.startswith("reached max_rank") or not doublings:
        return None
    d = doublings[-1]
    if d.rank != rec.rank or d.gain is None or not (d.above or d.leaning):
        return None
    return (f"the top rank may still bind: r={d.prev}->{d.rank} gained {d.gain.text(pct)} against the margin "
            f"{d.margin:.3g}, so a larger hydra.sweeper.max_rank may pay")


def _noise(noise: Any, steps: list[Step]) -> Optional[str]:
    """What the intervals cover, the one place it is written."""
    if len(steps) < 2:
        return None
    if noise is None:
        return ("no rank ran a second seed, so the intervals cover the eval examples only and no verdict is "
                "confident (hydra.sweeper.noise_seeds measures the training noise)")
    dof = "" if noise.dof == float("inf") else f", {noise.dof:g} degrees of freedom"
    return (f"the intervals cover the eval examples and the training noise: sd {noise.sd:.3g} of one run's value, "
            f"from {noise.source}{dof}")


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


def _curve(r: Rung) -> dict[int, float]:
    best = r.best
    return dict(best.intermediate) if best is not None else {}


def _curves(lad: Ladder, rule: StopRule) -> None:
    rungs = [r for r in lad.curve if r.complete]
    for i, r in enumerate(rungs):
        c = _curve(r)
        m = rule.loss_margin(c[max(c)]) if c else None
        if m is None:
            continue
        r.still_falling = budget_mod.still_falling(c, m)
        if i + 1 < len(rungs):
            nxt = _curve(rungs[i + 1])
            if nxt:
                r.separation_step = budget_mod.separation_step(c, nxt, m)


def _budget(lad: Ladder, rule: StopRule) -> Optional[str]:
    """The budget verdict, the one place it is written: None when the recommendation can stand as a capacity
    answer."""
    rec = lad.recommendation
    if rec is None:
        return None
    top = [r for r in lad.complete if r.rank >= rec.rank]
    parts: list[str] = []
    if top and all(r.still_falling for r in top):
        factors = [_more_steps(_curve(r), rule) for r in top]
        steps = max(max(_curve(r)) for r in top)
        known = [f for f in factors if f is not None]
        more = (f"about {max(known):.1f}x the steps (~{round(max(known) * steps)} instead of {steps}) would bring "
                "each eval interval's gain under the margin" if known and len(known) == len(factors)
                else "the curves are not yet bending, so at least 2x the steps")
        ranks = ", ".join(f"r={r.rank}" for r in top)
        parts.append(f"bound by the training budget: {ranks} still improved by more than the margin over their "
                     f"last eval interval; {more}")
    tokens = _tokens_note(lad)
    return "; ".join(parts + ([tokens] if tokens else [])) or None


def _tokens_note(lad: Ladder) -> Optional[str]:
    r0 = lad.complete[0] if lad.complete else None
    if r0 is not None and r0.supervised_tokens and r0.trainable_params and r0.supervised_tokens < r0.trainable_params:
        return (f"{fmt_params(r0.supervised_tokens)} supervised tokens against {fmt_params(r0.trainable_params)} "
                f"adapter parameters at r={r0.rank}: capacity is unlikely to bind (LoRA keeps up while its "
                "parameters exceed the completion tokens trained on)")
    return None


def settle_budget(lad: Ladder, rule: StopRule) -> Ladder:
    """The budget check's verdict, once its two longer runs finished: does the ladder's verdict between the
    recommended rank and its neighbour hold at ``factor`` times the steps? When it flips (the smaller rank is now
    confidently within the margin, or the larger now confidently beats it by more), the recommendation follows
    the longer run and the budget line says so with its evidence; when the longer runs show neither with
    confidence, the verdict is ``inconclusive`` and the sweep's recommendation stands; a check still running
    or off leaves the ladder's reading."""
    bc = lad.budget_check
    if bc is None or lad.recommendation is None:
        return lad
    tokens = _tokens_note(lad)
    if bc.pending:
        lad.budget = "; ".join(x for x in (f"checking: r={bc.lower} and r={bc.upper} are trained again at {bc.steps} "
                                           f"steps ({bc.factor:g}x)", tokens) if x)
        return lad
    a, b = (j.trial for j in bc.jobs)
    if a is None or b is None or a.objective is None or b.objective is None:
        bc.verdict = "failed"
        why = "; ".join(str(t.fail_reason) for t in (a, b) if t is not None and t.fail_reason) or "no value"
        lad.budget = "; ".join(x for x in (f"the budget check at {bc.steps} steps did not finish ({why}); "
                                           + (lad.budget or "no budget reading"), tokens) if x)
        return lad
    noise = getattr(rule, "noise", lambda steps: None)([r.step() for r in lad.complete])
    sa, sb = _check_step(lad, a, bc.lower), _check_step(lad, b, bc.upper)
    gain = rule.improvement(sa, sb, noise)  # type: ignore[attr-defined]
    if gain is None:
        bc.verdict = "failed"
        lad.budget = "; ".join(x for x in (f"the budget check's runs were evaluated on other eval examples: not "
                                           f"compared; {lad.budget or ''}".rstrip("; "), tokens) if x)
        return lad
    m = rule.margin_abs(sb.value if rule.better(sb.value, sa.value) else sa.value)  # type: ignore[attr-defined]
    # The longer runs decide only what they show with confidence, as the margin rule does: the larger rank
    # gains more than the margin (its lower bound above it), or the smaller is within the margin (the gain's
    # upper bound at most the margin). Between the two, they settle nothing and the sweep's verdict stands.
    upper_wins = noise is not None and gain.lo > m
    lower_holds = noise is not None and gain.hi <= m
    rank = bc.upper if upper_wins else bc.lower if lower_holds else None
    flips = rank is not None and rank != bc.sweep_rank
    bc.gain, bc.margin = gain, m
    bc.verdict = "inconclusive" if rank is None else "flips" if flips else "holds"
    pct = round(getattr(rule, "confidence", 0.95) * 100)
    at = (f"trained {bc.steps} steps ({bc.factor:g}x the sweep's), r={bc.upper} ({fmt_value(sb.value)}) vs "
          f"r={bc.lower} ({fmt_value(sa.value)}): {gain.text(pct)} against the margin {m:.3g}")
    if rank is None:
        text = (f"the budget check is inconclusive: {at}, neither confidently above the margin nor within it; "
                f"r={bc.sweep_rank} stands on the sweep's steps, and more steps or seeds would tell")
    elif not flips:
        text = f"the verdict holds at {bc.factor:g}x the steps: {at}"
    else:
        what = ("capacity binds later than the sweep's steps show" if upper_wins
                else "the sweep's steps ranked learning speed, not capacity")
        text = (f"bound by the training budget: {at}, so r={rank} when trained {bc.steps} steps; {what} "
                f"(the sweep recommended r={bc.sweep_rank})")
        old = lad.recommendation
        lad.recommendation = Recommendation(rank, old.best_rank, old.tolerance_abs,
                                            f"r={rank} by the budget check: {at} (at the sweep's steps: {old.why})",
                                            old.knee)
    lad.budget = "; ".join(x for x in (text, tokens) if x)
    return lad


def _check_step(lad: Ladder, t: Trial, rank: int) -> Step:
    got = t.examples(lad.objective)
    ex = Examples.of([got[0]], got[1], lad.kind, fingerprint=got[2]) if got else None
    return Step(rank, t.objective, ex, [t.objective] if t.objective is not None else [], "",
                (got[2],) if got and got[2] else ())


def _more_steps(curve: dict[int, float], rule: StopRule) -> Optional[float]:
    m = rule.loss_margin(min(curve.values()))
    return None if m is None else budget_mod.more_steps(curve, m)


def annotate(lad: Ladder, evidence: Any) -> None:
    """Attach the adapters' own evidence (:mod:`ranksweep.evidence`) to each rung, where readable."""
    prev: Optional[Rung] = None
    for r in lad.complete:
        if prev is not None and r.output_dirs and prev.output_dirs:
            got = evidence(prev.output_dirs[0], r.output_dirs[0])
            if got is not None:
                r.similarity, r.extra_energy = got
        prev = r
