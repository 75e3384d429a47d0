"""The nested-rank prescreen (``hydra.sweeper.prescreen=nested``): read one run at every rank, then confirm.

One adapter is trained at the ladder's top rank with nested ranks (:mod:`ranksweep.trial.nested`); its job
stores every prefix b evaluated on the ladder's eval examples, per example. The stop rule reads that curve
like a ladder's (with no training noise to add: one run) and names a candidate rank r̂. The ladder then
trains r̂/factor, r̂ and r̂*factor separately -- the *confirmations*, searched narrowly around the values the
prescreen trained with -- and its answer rests on them alone. Where they contradict r̂ the ladder goes on:
upwards while the rule sees confident gains, as it would without the prescreen, or downwards a rank at a
time while the smallest rank trained does as well as the best (:class:`Plan`).

Why: DyLoRA (arXiv 2210.07558), QDyLoRA (arXiv 2402.10462) and MatryoshkaLoRA (arXiv 2605.07850) train
such nested adapters; whether a prefix tracks a separately trained adapter of its rank is measured by
:func:`agreement` and ``bench/rank_recovery.py`` (method ``nested``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ranksweep.objectives import kind_of
from ranksweep.sweep.results import (
    PRESCREEN_SLOT,
    Job,
    JobStatus,
    Ladder,
    Prescreen,
    PrescreenVerdict,
    Trial,
    examples_of,
)
from ranksweep.sweep.rules import Step, StopRule
from ranksweep.sweep.stats import Examples

__all__ = ["EVERY_RANK", "Plan", "agreement", "centers", "kendall_tau", "narrow", "plan", "read_prescreen", "settle",
           "went_down"]


@dataclass(frozen=True)
class Plan:
    """Which ranks of a ladder are trained and how: ``skip`` ranks are not (the prescreen placed the knee
    above them), ``noise`` ranks run the noise seeds, ``narrow`` ranks search ``confirm_budget`` trials around
    the prescreen's values; ``down``: the confirmations found the rank below the candidate as good, so the
    ladder went on downwards."""

    skip: frozenset[int] = frozenset()
    noise: frozenset[int] = frozenset()
    narrow: frozenset[int] = frozenset()
    prescreen: Optional[Prescreen] = None
    down: bool = False


EVERY_RANK = Plan()  # every rank trained, as without a prescreen


def prefix_steps(trial: Trial, objective: str) -> list[Step]:
    """Each stored prefix of a prescreen trial as the rules see a rung: its value and per-example results."""
    out = []
    for b, ex in trial.prefixes().items():
        try:
            value = float(ex.get("value"))
        except (TypeError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        got = examples_of(ex, objective)
        examples = Examples.of([got[0]], got[1], kind_of(objective), fingerprint=got[2]) if got else None
        out.append(Step(b, value, examples, [value], "", (got[2],) if got and got[2] else ()))
    return out


def _one_run(rule: StopRule) -> StopRule:
    """The rule as it reads one run: its intervals cover the eval examples only (no training noise to add)."""
    fields = {f.name for f in dataclasses.fields(rule)} if dataclasses.is_dataclass(rule) else set()
    return dataclasses.replace(rule, known_noise=0.0) if "known_noise" in fields else rule  # type: ignore[type-var]


def read_prescreen(ranks: Sequence[int], factor: int, objective: str, rule: StopRule, base: Any,
                   status: JobStatus, trial: Optional[Trial]) -> Prescreen:
    """The prescreen of one ladder from its job: while it runs, only its job; once done, its prefix curve, the
    rule's candidate on it and the ranks that confirm it."""
    pre = Prescreen(ranks[-1], Job(0, PRESCREEN_SLOT, status, trial))
    if status == JobStatus.FAILED:
        pre.verdict = PrescreenVerdict.FAILED
        why = trial.fail_reason if trial is not None and trial.fail_reason else "?"
        pre.fallback = f"the prescreen failed ({why}): every rank runs, as without it"
        return pre
    if status != JobStatus.DONE or trial is None:
        return pre
    pre.steps = prefix_steps(trial, objective)
    if len(pre.steps) < 2:
        pre.verdict = PrescreenVerdict.FAILED
        pre.fallback = "the prescreen stored no prefix curve: every rank runs, as without it"
        return pre
    one = _one_run(rule)
    rec = one.recommend(pre.steps, base)
    cmp = one.compare(pre.steps, rec)
    pre.doublings = list(cmp.doublings) if cmp is not None else []
    if rec is None:
        pre.verdict, pre.fallback = PrescreenVerdict.FAILED, "no prefix had a value: every rank runs, as without it"
        return pre
    c = rec.rank
    pre.candidate, pre.why = c, rec.why
    pre.confirm = tuple(r for r in ((c // factor) if c % factor == 0 else -1, c, c * factor) if r in ranks)
    return pre


def plan(pre: Optional[Prescreen], ranks: Sequence[int]) -> Plan:
    """The ranks a ladder trains: none until its prescreen ran, the confirmations and what follows them once it
    did, every rank (as without it) when it failed."""
    if pre is None:
        return EVERY_RANK
    if pre.job.status in (JobStatus.TODO, JobStatus.RUNNING):
        return Plan(skip=frozenset(ranks), prescreen=pre)
    if not pre.confirm:
        return Plan(prescreen=pre)
    first = min(pre.confirm)
    return Plan(skip=frozenset(r for r in ranks if r < first), noise=frozenset({first}),
                narrow=frozenset(pre.confirm), prescreen=pre)


def went_down(p: Plan, lad: Ladder, ranks: Sequence[int]) -> Optional[Plan]:
    """When the ladder recommends the lowest rank it trained and smaller ranks exist (a rank below the candidate
    did as well as it), the plan that trains the next rank down as well (searched as the confirmations are):
    the ladder goes on downwards, a rank at a time, until a smaller rank no longer does as well. Else None."""
    rec = lad.recommendation
    if p.prescreen is None or not p.skip or not lad.done or rec is None or not p.narrow:
        return None
    below = [r for r in ranks if r < rec.rank]
    if rec.rank != min(r for r in ranks if r not in p.skip) or not below:
        return None
    return dataclasses.replace(p, skip=p.skip - {below[-1]}, narrow=p.narrow | {below[-1]}, down=True)


def settle(p: Plan, lad: Ladder) -> None:
    """The prescreen's verdict once its ladder is done, in words, and how its prefixes agree with the ranks
    trained separately; the prescreen goes on the ladder."""
    pre = p.prescreen
    if pre is None:
        return
    lad.prescreen = pre
    pre.trained = tuple(sorted(p.narrow))
    if pre.verdict == PrescreenVerdict.FAILED or pre.candidate is None:
        return
    pre.agreement = agreement(pre, lad)
    rec = lad.recommendation
    if not lad.done or rec is None:
        return
    if rec.rank == pre.candidate:
        pre.verdict = PrescreenVerdict.CONFIRMED
        return
    pre.verdict = PrescreenVerdict.CONTRADICTED
    top = max([r.rank for r in lad.curve if r.trials] or [rec.rank])
    if p.down:
        pre.fallback = (f"r={min(pre.confirm)} did as well as the candidate r={pre.candidate}: the ladder went down "
                        f"to r={min(pre.trained)} and recommends r={rec.rank}")
    elif rec.rank > pre.candidate and top > max(pre.confirm):
        pre.fallback = (f"r={pre.candidate}->{max(pre.confirm)} was a confident gain: the ladder went on to "
                        f"r={top}, as without the prescreen, and recommends r={rec.rank}")
    else:
        pre.fallback = f"the confirmations recommend r={rec.rank}, not the candidate r={pre.candidate}"


def agreement(pre: Prescreen, lad: Ladder) -> dict[str, Any]:
    """How the prefixes track the separately trained ranks: each shared rank's gap (prefix - separate, in
    objective units), Kendall's tau across them, and per doubling judged both ways whether the verdict
    ("a confident gain above the margin") is the same."""
    sep = {r.rank: float(r.mean) for r in lad.complete if r.mean is not None}
    pv = pre.values
    shared = [r for r in sorted(pv) if r in sep]
    mine = {(d.prev, d.rank): d.verdict for d in pre.doublings if d.verdict is not None}
    theirs = {(d.prev, d.rank): d.verdict for d in (lad.comparison.doublings if lad.comparison else [])
              if d.verdict is not None}
    both = [k for k in theirs if k in mine]
    return {"ranks": shared, "gap": {str(r): pv[r] - sep[r] for r in shared},
            "kendall_tau": kendall_tau([pv[r] for r in shared], [sep[r] for r in shared]),
            "verdicts_same": sum((mine[k] == "above") == (theirs[k] == "above") for k in both),
            "verdicts_compared": len(both)}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Kendall's tau-b of two paired sequences (None: fewer than two pairs, or either constant)."""
    from scipy.stats import kendalltau

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    tau = kendalltau(x, y).statistic
    return float(tau) if tau is not None and math.isfinite(tau) else None


def centers(dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The values the prescreen trains with under a search: each range's middle (geometric on a log scale),
    a choice's first option."""
    out: dict[str, Any] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = d.choices[0]
        elif isinstance(d, (FloatDistribution, IntDistribution)):
            mid = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
            out[name] = int(round(mid)) if isinstance(d, IntDistribution) else float(mid)
    return out


def narrow(dists: dict[str, BaseDistribution], around: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The confirmations' search space: each numeric range within a factor of 2 of ``around`` (a quarter of
    the range on a linear scale), clipped to the range; a choice keeps its options (a study holds one set per
    name). Optuna has no "around a point" distribution, so the range is cut here."""
    out: dict[str, BaseDistribution] = {}
    for name, d in dists.items():
        v = around.get(name)
        if v is None:
            out[name] = d
        elif isinstance(d, (FloatDistribution, IntDistribution)):
            if d.log:
                lo, hi = max(d.low, v / 2), min(d.high, v * 2)
            else:
                w = (d.high - d.low) / 8
                lo, hi = max(d.low, v - w), min(d.high, v + w)
            if isinstance(d, IntDistribution):
                lo, hi = int(math.floor(lo)), int(math.ceil(hi))
                out[name] = IntDistribution(lo, max(hi, lo), log=d.log) if lo < hi else d
            else:
                out[name] = FloatDistribution(float(lo), float(hi), log=d.log) if lo < hi else d
        else:
            out[name] = d
    return out
