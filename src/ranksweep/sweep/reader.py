"""The one reader: an Optuna study's trials -> :class:`~.results.Ladder` objects.

A pure function of the trials, so every worker, a resumed run and the final summary reach the same
decisions from the same shared results. A trial belongs to the job ``(ladder, rank, seed, slot)``
named by its user attributes; rank 0 is the ladder's untrained base. The stop rule
(:mod:`ranksweep.sweep.rules`) is applied to growing prefixes of finished ranks in ladder order, so
results that arrive out of order (speculative ranks, several workers) give the same stop rank as one
worker running them in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from optuna.trial import TrialState

from ranksweep.launchers import MAX_RETRIES, RETRY_KINDS
from ranksweep.objectives import kind_of
from ranksweep.sweep import prescreen
from ranksweep.sweep.conclude import conclude, settle_budget
from ranksweep.sweep.keys import (
    ADAPTER,
    ALPHA,
    DURATION_S,
    LADDER,
    PEAK_MEM_GB,
    RANK,
    STEPS,
    STUDY_SETTINGS,
    STUDY_SPACE,
    SUPERVISED_TOKENS,
    TRAINABLE_PARAMS,
)
from ranksweep.sweep.prescreen import EVERY_RANK, Plan
from ranksweep.sweep.results import (
    BUDGET_SLOT,
    PRESCREEN_SLOT,
    BudgetCheck,
    Job,
    JobStatus,
    Ladder,
    Rung,
    Trial,
    mean_std,
)
from ranksweep.sweep.rules import Step, StopRule, decide
from ranksweep.sweep.rules.margin import MarginRule
from ranksweep.sweep.rules.share import ShareRule
from ranksweep.sweep.stats import Examples

JobKey = tuple[str, int, int, int]
RULES = {"margin": MarginRule, "share": ShareRule}  # hydra.sweeper.stop_rule -> the rule


@dataclass(frozen=True)
class Spec:
    """How to read a study: its ladders, its stop rule and the rest of what its sweeper followed."""

    ladders: tuple[tuple[str, tuple[str, ...]], ...]  # (key, combo) per ladder
    ranks: tuple[int, ...]
    seeds: int
    rule: StopRule
    direction: str
    objective: str
    max_rank: int
    factor: int
    budget: int = 1  # search trials per rank
    noise_seeds: int = 0  # extra seeds of the first rank's best values (the training noise)
    budget_check: float = 0.0  # the factor of the steps the recommended rank and its neighbour are rerun at
    resolve_seeds: int = 0  # more seeds of two ranks the data lean between (Recommendation.lean)
    prescreen: bool = False  # hydra.sweeper.prescreen=nested: a nested-rank run first, then its confirmations
    confirm_budget: int = 1  # search trials per confirmation rank (prescreen)


def index_trials(trials: Sequence[Any]) -> dict[JobKey, list[Trial]]:
    """Optuna trials (frozen) or :class:`Trial` objects grouped by job ``(ladder, rank, seed, slot)``."""
    idx: dict[JobKey, list[Trial]] = {}
    for t in trials:
        t = t if isinstance(t, Trial) else Trial.from_frozen(t)
        if LADDER in t.attrs and not t.claim_lost:
            idx.setdefault((t.ladder, t.rank, t.seed, t.slot), []).append(t)
    return idx


def job_status(ts: Sequence[Trial]) -> tuple[JobStatus, Optional[Trial]]:
    """``done`` / ``running`` / ``failed`` / ``todo`` for one job, from all its trials.

    A trial that FAILED because its worker died (no ``failure_kind``) leaves the job ``todo``: it is
    run again, and so does one the scheduler cancelled or preempted (``launchers.RETRY_KINDS``), up to
    ``launchers.MAX_RETRIES`` times. A real failure (an exception, NaN, a timeout, a rank that does not
    fit) is final.
    """
    for t in ts:
        if t.finished:
            return JobStatus.DONE, t
    for t in ts:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            return JobStatus.RUNNING, t
    for t in ts:  # data that changed during the sweep (DataChanged): run again once it is restored
        if t.state == TrialState.FAIL and t.failure_kind and t.failure_kind not in (*RETRY_KINDS, "data_changed"):
            return JobStatus.FAILED, t
    lost = [t for t in ts if t.state == TrialState.FAIL and t.failure_kind in RETRY_KINDS]  # the scheduler took it away
    if len(lost) > MAX_RETRIES:
        return JobStatus.FAILED, lost[-1]
    return JobStatus.TODO, None


def _examples(ts: Sequence[Trial], objective: str) -> Optional[tuple[Examples, dict[str, Any]]]:
    got = [t.examples(objective) for t in ts]
    if not got or any(g is None for g in got):
        return None
    nums, dens, prints = zip(*got)  # type: ignore[misc]
    if len(set(prints)) > 1 or len({len(d) for d in dens}) > 1:
        return None  # not the same eval examples: no paired comparison
    return (Examples.of(nums, dens[0], kind_of(objective), fingerprint=prints[0]),
            {"fingerprint": prints[0], "n": len(dens[0])})


def build_rung(rank: int, jobs: list[Job], spec: Spec) -> Rung:
    """A rung from its jobs: its value is the best search trial's, averaged with its further seeds."""
    rung = Rung(rank=rank, jobs=jobs, _direction=spec.direction)
    ts = rung.trials
    best = rung.best
    chosen = ([best] + [j.trial for j in jobs if not j.search and j.trial is not None and j.trial.objective
                        is not None]) if best is not None else []
    rung.values = [float(t.objective) for t in chosen]  # type: ignore[arg-type]
    rung.mean, rung.std = mean_std(rung.values)
    states = {t.state for t in ts}
    rung.state = (TrialState.COMPLETE if rung.mean is not None else TrialState.PRUNED if TrialState.PRUNED in states
                  else TrialState.FAIL if TrialState.FAIL in states
                  else min(states, key=lambda st: st.name) if states else TrialState.WAITING)
    shown = chosen or ts
    first = (best or (ts[0] if ts else None))
    rung.seeds = [t.seed for t in chosen]
    rung.trial_numbers = [t.number for t in ts]
    rung.alpha = first.attrs.get(ALPHA) if first else None
    rung.trainable_params = first.attrs.get(TRAINABLE_PARAMS) if first else None
    rung.duration_s = sum(t.number_attr(DURATION_S) or 0.0 for t in ts)
    rung.peak_mem_gb = max([t.number_attr(PEAK_MEM_GB) or 0.0 for t in ts] or [0.0])
    rung.fail_reason = "; ".join(str(t.fail_reason) for t in ts
                                 if t.state == TrialState.FAIL and t.fail_reason) or None
    rung.output_dirs = [t.output_dir for t in shown]
    rung.wandb_runs = [t.wandb_run for t in shown]
    rung.lrs = [lr for lr in (j.trial.lr for j in jobs if j.search and j.trial is not None) if lr is not None]
    if best is not None:
        rung.best_params = best.searched
        rung.best_lr = best.lr
        rung.supervised_tokens = best.attrs.get(SUPERVISED_TOKENS)
        rung.effective_rank = (best.attrs.get(ADAPTER) or {}).get("effective_rank")
        rung.lr_at_edge = _edge(best, rung.lrs)
        ex = _examples(chosen, spec.objective)
        rung.examples = ex[0] if ex else None
        rung.eval_fingerprints = list(dict.fromkeys(t.eval_fingerprint for t in chosen if t.eval_fingerprint))
        if len(rung.eval_fingerprints) > 1:  # its seeds saw other eval examples: no examples, no pairs
            rung.note = (f"its seeds were evaluated on different eval examples (fingerprints "
                         f"{', '.join(rung.eval_fingerprints)}): not compared")
    elif ts and rung.finished:
        rung.note = ("every trial pruned" if TrialState.PRUNED in states else "every trial failed")
    return rung


def _edge(best: Trial, tried: Sequence[float]) -> Optional[str]:
    """'low' / 'high' when the best learning rate was the extreme value tried, near the range's edge."""
    if "trainer.lr" not in best.ranges or best.lr is None or len(tried) < 2:
        return None
    lo, hi = best.ranges["trainer.lr"]
    pos = (math.log(best.lr) - math.log(lo)) / max(math.log(hi) - math.log(lo), 1e-12)
    if best.lr <= min(tried) and pos < 0.15:
        return "low"
    if best.lr >= max(tried) and pos > 0.85:
        return "high"
    return None


def _jobs(key: str, rank: int, idx: dict[JobKey, list[Trial]], spec: Spec, resolve: frozenset[int],
          p: Plan = EVERY_RANK) -> list[Job]:
    """A rung's jobs: its search slots at seed 0, then its further seeds (the first rank also runs the noise
    seeds that measure the training noise -- with a prescreen, the first confirmation does; a rank in
    ``resolve``, ``resolve_seeds`` more). A confirmation searches ``confirm_budget`` trials."""
    noisy = rank in p.noise if p.noise else rank == spec.ranks[0]
    seeds = max(spec.seeds, 1 + spec.noise_seeds) if noisy else spec.seeds
    seeds += spec.resolve_seeds if rank in resolve else 0
    budget = min(spec.confirm_budget, spec.budget) if rank in p.narrow else spec.budget
    jobs = [Job(0, k, *job_status(idx.get((key, rank, 0, k), [])), search=True) for k in range(budget)]
    return jobs + [Job(s, 0, *job_status(idx.get((key, rank, s, 0), []))) for s in range(1, seeds)]


def _budget_check(lad: Ladder, idx: dict[JobKey, list[Trial]], spec: Spec) -> Optional[BudgetCheck]:
    """The budget check a stopped ladder runs (None: off, not stopped, a rule without intervals, or fewer than
    two ranks with values): its recommended rank and the rank below it (above it, for the smallest) rerun at
    ``budget_check`` times the steps the recommended rank's best trial trained."""
    rec = lad.recommendation
    if spec.budget_check <= 0 or not lad.done or rec is None or lad.comparison is None:
        return None
    ranks = [r.rank for r in lad.complete]
    if rec.rank not in ranks or len(ranks) < 2:
        return None
    i = ranks.index(rec.rank)
    lower, upper = (ranks[i - 1], ranks[i]) if i > 0 else (ranks[0], ranks[1])
    best = next(r for r in lad.complete if r.rank == rec.rank).best
    steps = best.number_attr(STEPS) if best is not None else None
    if not steps:
        return None
    jobs = [Job(0, BUDGET_SLOT, *job_status(idx.get((lad.key, r, 0, BUDGET_SLOT), []))) for r in (lower, upper)]
    return BudgetCheck(spec.budget_check, int(round(spec.budget_check * steps)), lower, upper, rec.rank, jobs)


def _stop(lad: Ladder, reason: str, rank: Optional[int]) -> Ladder:
    lad.done, lad.stop_reason, lad.stop_rank = True, reason, rank
    return lad


def read_ladder(key: str, combo: tuple[str, ...], idx: dict[JobKey, list[Trial]], spec: Spec,
                resolve: frozenset[int] = frozenset(), p: Plan = EVERY_RANK) -> Ladder:
    """Where one ladder stands: its base, each rank's jobs (with more seeds for the ranks in ``resolve``; none
    for the ranks a prescreen skips, ``p``), and whether the stop rule fired."""
    lad = Ladder(key=key, combo=combo, direction=spec.direction, objective=spec.objective)
    lad.base_status, lad.base_trial = job_status(idx.get((key, 0, 0, 0), []))
    if lad.base_status == JobStatus.FAILED:
        why = lad.base_trial.fail_reason if lad.base_trial else "?"
        return _stop(lad, f"base evaluation failed: {why}", None)
    lad.resolved = tuple(sorted(resolve))
    lad.rungs = [build_rung(r, _jobs(key, r, idx, spec, resolve, p) if lad.base_status == JobStatus.DONE
                            and r not in p.skip else [], spec) for r in spec.ranks]
    for rung in lad.rungs:
        rung.skipped = rung.rank in p.skip and lad.base_status == JobStatus.DONE
    if lad.base_status != JobStatus.DONE:
        return lad
    lad.base = lad.base_trial.objective if lad.base_trial else None
    ex = _examples([lad.base_trial], spec.objective) if lad.base_trial is not None and lad.base is not None else None
    lad.base_step = Step(0, lad.base, ex[0] if ex else None, [] if lad.base is None else [lad.base], "",
                         (ex[1]["fingerprint"],) if ex and ex[1]["fingerprint"] else ())
    steps: list[Step] = []
    for rung in lad.rungs:
        if rung.skipped:
            continue
        if not rung.finished:
            break
        if rung.infeasible:  # the memory estimate says this rank does not fit; larger ones take more
            t = rung.jobs[0].trial
            why = t.fail_reason if t and t.fail_reason else "would not fit"
            return _stop(lad, f"r={rung.rank} {why}", steps[-1].rank if steps else None)
        step = rung.step()
        if step.value is None and not any(s.value is not None for s in steps):
            continue  # nothing to compare it with yet: a rank whose every trial failed is skipped
        steps.append(step)
        decision = decide(spec.rule, steps, lad.base_step, spec.max_rank, spec.factor)
        if decision.stop:
            return _stop(lad, decision.reason, rung.rank)
    if all(r.finished or r.skipped for r in lad.rungs) and not all(r.skipped for r in lad.rungs):
        return _stop(lad, f"reached max_rank={spec.max_rank}", spec.ranks[-1])
    return lad


def read_ladders(trials: Sequence[Any], spec: Spec) -> list[Ladder]:
    """Every ladder of ``spec`` from the study's trials, each with its recommendation."""
    idx = index_trials(trials)
    return [_read_resolved(key, combo, idx, spec) for key, combo in spec.ladders]


def _read_resolved(key: str, combo: tuple[str, ...], idx: dict[JobKey, list[Trial]], spec: Spec) -> Ladder:
    """One ladder, concluded, over the ranks its plan trains (with a prescreen, :mod:`.prescreen`: while a rank
    below the candidate does as well, the plan goes a rank further down)."""
    p = _plan(key, combo, idx, spec)
    lad = _resolved(key, combo, idx, spec, p)
    while (down := prescreen.went_down(p, lad, spec.ranks)) is not None:
        p = down
        lad = _resolved(key, combo, idx, spec, p)
    prescreen.settle(p, lad)
    lad.budget_check = _budget_check(lad, idx, spec)
    return settle_budget(lad, spec.rule)


def _resolved(key: str, combo: tuple[str, ...], idx: dict[JobKey, list[Trial]], spec: Spec, p: Plan) -> Ladder:
    """The ladder over plan ``p``, concluded. Where its answer rests on two ranks the data lean between (``lean``),
    it is read again with ``resolve_seeds`` more seeds of both: not done until they ran, then compared on all its
    seeds. One pair per plan, so the cost is bounded; the first reading ignores those seeds' trials, so the pair
    found never changes."""
    lad = _concluded(read_ladder(key, combo, idx, spec, p=p), spec)
    rec = lad.recommendation
    if spec.resolve_seeds > 0 and lad.done and rec is not None and rec.lean is not None:
        resolve = frozenset((rec.rank, rec.lean))
        lad = _concluded(read_ladder(key, combo, idx, spec, resolve, p), spec)
        if lad.done and lad.noise:
            ranks = " and ".join(f"r={r}" for r in sorted(resolve))
            lad.noise += (f"; {ranks} ran {spec.resolve_seeds} more seeds each, where the data leaned towards the "
                          "larger rank without confirming it (hydra.sweeper.resolve_seeds)")
    return lad


def _plan(key: str, combo: tuple[str, ...], idx: dict[JobKey, list[Trial]], spec: Spec) -> Plan:
    """The ranks the ladder trains: every one, or with a prescreen (once the base ran) what it leaves."""
    if not spec.prescreen:
        return EVERY_RANK
    base = read_ladder(key, combo, idx, spec, p=Plan(skip=frozenset(spec.ranks)))
    if base.base_status != JobStatus.DONE:
        return EVERY_RANK  # the base first, as every ladder
    status, trial = job_status(idx.get((key, spec.ranks[-1], 0, PRESCREEN_SLOT), []))
    pre = prescreen.read_prescreen(spec.ranks, spec.factor, spec.objective, spec.rule,
                                   base.base_step if base.base_step is not None else base.base, status, trial)
    return prescreen.plan(pre, spec.ranks)


def _concluded(lad: Ladder, spec: Spec) -> Ladder:
    if not lad.stop_reason:
        lad.stop_reason = "incomplete"
    return conclude(lad, spec.rule)


def spec_of_study(study: Any, meta: Optional[dict[str, Any]] = None, keys: Sequence[str] = ()) -> Spec:
    """How a study is read: the settings its sweeper stored (study attribute ``ranksweep_settings``), else
    ``meta`` (the ``sweep`` block of ``sweep_summary.json``), older records completed by the study's
    ``ranksweep_space``, else the defaults (:meth:`SweepSettings.from_record`); the study's direction, and
    max_rank the largest rank that ran. ``keys`` orders the ladders first."""
    from ranksweep.sweep.settings import SweepSettings

    space = dict(study.user_attrs.get(STUDY_SPACE) or {})
    record = {**(meta or {}), **(study.user_attrs.get(STUDY_SETTINGS) or {})}
    s = SweepSettings.from_record(record, space)
    s.direction = study.direction.name.lower()
    trials = study.get_trials(deepcopy=False)
    s.max_rank = max([s.start_rank, *[int(r) for r in record.get("ranks") or []],
                      *[int(t.user_attrs.get(RANK, 0) or 0) for t in trials]])
    order = [k for k in keys if k]
    order += [k for k in space.get("ladders") or [] if k not in order]
    order += [k for k in dict.fromkeys(t.user_attrs.get(LADDER) for t in trials) if k and k not in order]
    return spec_of(s, [(k, () if k == "default" else tuple(k.split(" "))) for k in order])


def spec_of(s: Any, ladders: Sequence[tuple[str, tuple[str, ...]]]) -> Spec:
    """The reading rules of :class:`~ranksweep.sweep.settings.SweepSettings` ``s``: its stop rule built from
    ``s.stop_rule`` and that rule's settings, its ladder and its search budget."""
    if s.stop_rule not in RULES:
        raise ValueError(f"stop_rule must be one of {', '.join(RULES)}, got {s.stop_rule!r}")
    return Spec(ladders=tuple(ladders), ranks=tuple(s.ranks), seeds=s.seeds_per_rank,
                rule=RULES[s.stop_rule].from_settings(s), direction=s.direction, objective=s.objective,
                max_rank=s.max_rank, factor=s.factor, budget=s.budget, noise_seeds=int(getattr(s, "noise_seeds", 0)),
                budget_check=float(getattr(s, "budget_check", 0.0)), resolve_seeds=int(getattr(s, "resolve_seeds", 0)),
                prescreen=getattr(s, "prescreen", "none") == "nested",
                confirm_budget=int(getattr(s, "confirm_budget", 1)))


def read_study(study: Any, meta: Optional[dict[str, Any]] = None, keys: Sequence[str] = ()) -> list[Ladder]:
    """The ladders of an Optuna study as :func:`read_ladders` gives them to the sweeper."""
    return read_ladders(study.get_trials(deepcopy=False), spec_of_study(study, meta, keys))
