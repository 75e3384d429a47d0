"""The one reader: an Optuna study's trials -> :class:`~.results.Ladder` objects.

A pure function of the trials, so every worker, a resumed run and the final summary reach the same
decisions from the same shared results. A trial belongs to the job ``(ladder, rank, seed, slot)``
named by its user attributes; rank 0 is the ladder's untrained base. The stop rule is applied to
growing prefixes of finished ranks in ladder order, so results that arrive out of order
(speculative ranks, several workers) give the same stop rank as one worker running them in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ranksweep.launchers import MAX_RETRIES, RETRY_KINDS
from ranksweep.sweep import ladder as ladder_mod
from ranksweep.sweep.results import Job, Ladder, Rung, Trial
from ranksweep.sweep.rules import Judge, decide_margin
from ranksweep.sweep.stats import KINDS, Examples

JobKey = tuple[str, int, int, int]


@dataclass(frozen=True)
class Spec:
    """How to read a study: its ladders and the rules its sweeper followed."""

    ladders: tuple[tuple[str, tuple[str, ...]], ...]  # (key, combo) per ladder
    ranks: tuple[int, ...]
    seeds: int
    rule: ladder_mod.StopRule
    direction: str
    objective: str
    max_rank: int
    factor: int
    tolerance: float
    judge: Optional[Judge] = None  # the margin rule; None: the share rule
    budget: int = 1  # search trials per rank
    patience: int = 2


def index_trials(trials: Sequence[Any]) -> dict[JobKey, list[Trial]]:
    """Optuna trials (frozen) or :class:`Trial` objects grouped by job ``(ladder, rank, seed, slot)``."""
    idx: dict[JobKey, list[Trial]] = {}
    for t in trials:
        t = t if isinstance(t, Trial) else Trial.from_frozen(t)
        if "ladder" in t.attrs and not t.attrs.get("claim_lost"):
            idx.setdefault((t.ladder, t.rank, t.seed, t.slot), []).append(t)
    return idx


def job_status(ts: Sequence[Trial]) -> tuple[str, Optional[Trial]]:
    """``done`` / ``running`` / ``failed`` / ``todo`` for one job, from all its trials.

    A trial that FAILED because its worker died (no ``failure_kind``) leaves the job ``todo``: it is
    run again, and so does one the scheduler cancelled or preempted (``launchers.RETRY_KINDS``), up to
    ``launchers.MAX_RETRIES`` times. A real failure (an exception, NaN, a timeout, a rank that does not
    fit) is final.
    """
    for t in ts:
        if t.finished:
            return "done", t
    for t in ts:
        if t.state in ("RUNNING", "WAITING"):
            return "running", t
    for t in ts:  # data that changed during the sweep (DataChanged): run again once it is restored
        if t.state == "FAIL" and t.failure_kind and t.failure_kind not in (*RETRY_KINDS, "data_changed"):
            return "failed", t
    lost = [t for t in ts if t.state == "FAIL" and t.failure_kind in RETRY_KINDS]  # the scheduler took it away
    if len(lost) > MAX_RETRIES:
        return "failed", lost[-1]
    return "todo", None


def _examples(ts: Sequence[Trial], objective: str) -> Optional[tuple[Examples, dict[str, Any]]]:
    got = [t.examples(objective) for t in ts]
    if not got or any(g is None for g in got):
        return None
    nums, dens, prints = zip(*got)  # type: ignore[misc]
    if len(set(prints)) > 1 or len({len(d) for d in dens}) > 1:
        return None  # not the same eval examples: no paired comparison
    return (Examples.of(nums, dens[0], KINDS.get(objective, "loss"), fingerprint=prints[0]),
            {"fingerprint": prints[0], "n": len(dens[0])})


def build_rung(rank: int, jobs: list[Job], spec: Spec) -> Rung:
    """A rung from its jobs: its value is the best search trial's, averaged with its further seeds."""
    rung = Rung(rank=rank, jobs=jobs, _direction=spec.direction)
    ts = rung.trials
    best = rung.best
    chosen = ([best] + [j.trial for j in jobs if not j.search and j.trial is not None and j.trial.objective
                        is not None]) if best is not None else []
    rung.values = [float(t.objective) for t in chosen]  # type: ignore[arg-type]
    rung.mean = sum(rung.values) / len(rung.values) if rung.values else None
    rung.std = (math.sqrt(sum((v - rung.mean) ** 2 for v in rung.values) / (len(rung.values) - 1))
                if len(rung.values) > 1 else (0.0 if rung.values else None))
    states = {t.state for t in ts}
    rung.state = ("COMPLETE" if rung.mean is not None else "PRUNED" if "PRUNED" in states
                  else "FAIL" if "FAIL" in states else sorted(states)[0] if states else "WAITING")
    shown = chosen or ts
    first = (best or (ts[0] if ts else None))
    rung.seeds = [t.seed for t in chosen]
    rung.trial_numbers = [t.number for t in ts]
    rung.alpha = first.attrs.get("alpha") if first else None
    rung.trainable_params = first.attrs.get("trainable_params") if first else None
    rung.duration_s = sum(t.number_attr("duration_s") or 0.0 for t in ts)
    rung.peak_mem_gb = max([t.number_attr("peak_mem_gb") or 0.0 for t in ts] or [0.0])
    rung.fail_reason = "; ".join(str(t.fail_reason) for t in ts if t.state == "FAIL" and t.fail_reason) or None
    rung.output_dirs = [t.output_dir for t in shown]
    rung.wandb_runs = [t.wandb_run for t in shown]
    rung.lrs = [lr for lr in (j.trial.lr for j in jobs if j.search and j.trial is not None) if lr is not None]
    if best is not None:
        rung.best_params = best.searched
        rung.best_lr = best.lr
        rung.supervised_tokens = best.attrs.get("supervised_tokens")
        rung.effective_rank = (best.attrs.get("adapter") or {}).get("effective_rank")
        rung.lr_at_edge = _edge(best, rung.lrs)
        ex = _examples(chosen, spec.objective)
        rung.examples = ex[0] if ex else None
        rung.eval_fingerprints = list(dict.fromkeys(t.eval_fingerprint for t in chosen if t.eval_fingerprint))
        if len(rung.eval_fingerprints) > 1:  # its seeds saw other eval examples: no examples, no pairs
            rung.note = (f"its seeds were evaluated on different eval examples (fingerprints "
                         f"{', '.join(rung.eval_fingerprints)}): not compared")
    elif ts and rung.finished:
        rung.note = ("every trial pruned" if "PRUNED" in states else "every trial failed")
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


def _jobs(key: str, rank: int, idx: dict[JobKey, list[Trial]], spec: Spec) -> list[Job]:
    jobs = [Job(0, k, *job_status(idx.get((key, rank, 0, k), [])), search=True) for k in range(spec.budget)]
    return jobs + [Job(s, 0, *job_status(idx.get((key, rank, s, 0), []))) for s in range(1, spec.seeds)]


def _stop(lad: Ladder, reason: str, rank: Optional[int]) -> Ladder:
    lad.done, lad.stop_reason, lad.stop_rank = True, reason, rank
    return lad


def read_ladder(key: str, combo: tuple[str, ...], idx: dict[JobKey, list[Trial]], spec: Spec) -> Ladder:
    """Where one ladder stands: its base, each rank's jobs, and whether the stop rule fired."""
    lad = Ladder(key=key, combo=combo, direction=spec.direction, objective=spec.objective)
    lad.base_status, lad.base_trial = job_status(idx.get((key, 0, 0, 0), []))
    if lad.base_status == "failed":
        why = lad.base_trial.fail_reason if lad.base_trial else "?"
        return _stop(lad, f"base evaluation failed: {why}", None)
    lad.rungs = [build_rung(r, _jobs(key, r, idx, spec) if lad.base_status == "done" else [], spec)
                 for r in spec.ranks]
    if lad.base_status != "done":
        return lad
    lad.base = lad.base_trial.objective if lad.base_trial else None
    steps = []
    for rung in lad.rungs:
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
        decision = _decide(lad, steps, spec)
        if decision.stop:
            return _stop(lad, decision.reason, rung.rank)
    if all(r.finished for r in lad.rungs):
        return _stop(lad, f"reached max_rank={spec.max_rank}", spec.ranks[-1])
    return lad


def _decide(lad: Ladder, steps: list, spec: Spec) -> ladder_mod.Decision:
    if spec.judge is not None:
        return decide_margin(steps, spec.judge, spec.patience, spec.max_rank, spec.factor)
    have = [s for s in steps if s.value is not None]
    if steps[-1].value is None:
        return ladder_mod.Decision(False, "continue", None, lad.shares)
    decision = ladder_mod.decide(spec.rule, lad.base, [s.rank for s in have], [s.seed_values for s in have],
                                 spec.direction, spec.max_rank, spec.factor)
    lad.shares = decision.shares
    return decision


def read_ladders(trials: Sequence[Any], spec: Spec) -> list[Ladder]:
    """Every ladder of ``spec`` from the study's trials, each with its recommendation."""
    idx = index_trials(trials)
    out = []
    for key, combo in spec.ladders:
        lad = read_ladder(key, combo, idx, spec)
        if not lad.stop_reason:
            lad.stop_reason = "incomplete"
        out.append(lad.conclude(spec.tolerance, spec.judge))
    return out


def spec_of_study(study: Any, meta: Optional[dict[str, Any]] = None, keys: Sequence[str] = ()) -> Spec:
    """How a study is read: its ladders and the rules its sweeper stored (study attribute
    ``ranksweep_settings``), else ``meta`` (the ``sweep`` block of ``sweep_summary.json``), else the
    defaults, with max_rank the largest rank that ran. ``keys`` orders the ladders first."""
    from ranksweep.sweep.settings import SweepSettings

    space = dict(study.user_attrs.get("ranksweep_space") or {})
    meta = {**(meta or {}), **(study.user_attrs.get("ranksweep_settings") or {})}
    d = SweepSettings()
    known = {k: v for k, v in meta.items() if k in SweepSettings.__dataclass_fields__}
    s = SweepSettings(**{**known, "start_rank": int(space.get("start_rank", d.start_rank)),
                         "factor": int(space.get("factor", d.factor)),
                         "seeds_per_rank": int(space.get("seeds_per_rank", d.seeds_per_rank)),
                         "objective": str(space.get("objective", meta.get("objective", d.objective))),
                         "direction": study.direction.name.lower(), "search": space.get("search") or {},
                         "search_budget": int(space.get("search_budget", meta.get("search_budget", 1)))})
    trials = study.get_trials(deepcopy=False)
    s.max_rank = max([s.start_rank, *[int(r) for r in meta.get("ranks") or []],
                      *[int(t.user_attrs.get("rank", 0) or 0) for t in trials]])
    order = [k for k in keys if k]
    order += [k for k in space.get("ladders") or [] if k not in order]
    order += [k for k in dict.fromkeys(t.user_attrs.get("ladder") for t in trials) if k and k not in order]
    return spec_of(s, [(k, () if k == "default" else tuple(k.split(" "))) for k in order])


def spec_of(s: Any, ladders: Sequence[tuple[str, tuple[str, ...]]]) -> Spec:
    """The reading rules of :class:`~ranksweep.sweep.settings.SweepSettings` ``s``."""
    judge = None if s.stop_rule == "share" else Judge(s.direction, s.margin, s.margin_type == "relative",
                                                      s.confidence, s.bootstrap)
    return Spec(ladders=tuple(ladders), ranks=tuple(s.ranks), seeds=s.seeds_per_rank,
                rule=ladder_mod.StopRule(min_gain=s.min_gain, patience=s.patience), direction=s.direction,
                objective=s.objective, max_rank=s.max_rank, factor=s.factor, tolerance=s.tolerance, judge=judge,
                budget=s.budget, patience=s.patience)


def read_study(study: Any, meta: Optional[dict[str, Any]] = None, keys: Sequence[str] = ()) -> list[Ladder]:
    """The ladders of an Optuna study as :func:`read_ladders` gives them to the sweeper."""
    return read_ladders(study.get_trials(deepcopy=False), spec_of_study(study, meta, keys))
