"""Reading a study as rank ladders, and deciding what to run next.

Pure functions of the study's trials (Optuna ``FrozenTrial``), so that every
worker, a resumed run and the final summary reach the same decisions from
the same shared results. A trial belongs to the job ``(ladder, rank, seed)``
named by its user attributes; rank 0 is the ladder's untrained base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ranksweep import ladder as ladder_mod

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Key = tuple[str, int, int]


@dataclass(frozen=True)
class Item:
    """One job: (ladder, rank, seed); rank 0 evaluates the base."""

    ladder: str
    combo: tuple[str, ...]
    rank: int
    seed: int


@dataclass
class LadderView:
    key: str
    combo: tuple[str, ...]
    base_status: str = "todo"
    base: float | None = None
    statuses: dict[int, list[tuple[str, FrozenTrial | None]]] = field(default_factory=dict)
    done: bool = False
    stop_reason: str = ""
    stop_rank: int | None = None
    shares: list = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # needed ranks not finished yet, in order


def index_trials(trials: Sequence[FrozenTrial]) -> dict[Key, list[FrozenTrial]]:
    idx: dict[Key, list[FrozenTrial]] = {}
    for t in trials:
        a = t.user_attrs
        if "ladder" in a and not a.get("claim_lost"):
            idx.setdefault((a["ladder"], int(a["rank"]), int(a["seed"])), []).append(t)
    return idx


def status(ts: Sequence[FrozenTrial]) -> tuple[str, FrozenTrial | None]:
    """``done`` / ``running`` / ``failed`` / ``todo`` for one job, from all its trials.

    A trial that FAILED because its worker died (no ``failure_kind``) leaves the job
    ``todo``: it is run again. A real failure (an exception, NaN) is final.
    """
    for t in ts:
        if t.state in FINISHED:
            return "done", t
    for t in ts:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            return "running", t
    for t in ts:
        if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind"):
            return "failed", t
    return "todo", None


def value(t: FrozenTrial | None) -> float | None:
    """A trial's objective; a pruned trial counts with its last reported value."""
    if t is None:
        return None
    if t.state == TrialState.COMPLETE and t.value is not None:
        return float(t.value)
    if t.state == TrialState.PRUNED and t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


@dataclass
class Settings:
    ranks: list[int]
    seeds: int
    rule: ladder_mod.StopRule
    direction: str
    max_rank: int
    factor: int


def evaluate(key: str, combo: tuple[str, ...], idx: dict[Key, list[FrozenTrial]], s: Settings) -> LadderView:
    """Where one ladder stands: its base, each rank's jobs, and whether the stop rule fired.

    The stop rule is applied to growing prefixes of finished ranks, in ladder
    order, so results that arrive out of order (speculative ranks, several
    workers) give the same stop rank as one worker running them in order.
    """
    view = LadderView(key=key, combo=combo)
    view.base_status, base_t = status(idx.get((key, 0, 0), []))
    if view.base_status == "failed":
        view.done = True
        view.stop_reason = f"base evaluation failed: {base_t.user_attrs.get('fail_reason') if base_t else '?'}"
        return view
    if view.base_status != "done":
        return view
    view.base = value(base_t)
    view.statuses = {r: [status(idx.get((key, r, seed), [])) for seed in range(s.seeds)] for r in s.ranks}
    finished = {r: all(st in ("done", "failed") for st, _ in sts) for r, sts in view.statuses.items()}
    ranks: list[int] = []
    values: list[list[float]] = []
    for r in s.ranks:
        if not finished[r]:
            break
        if all(st == "failed" and t is not None and t.user_attrs.get("failure_kind") == "infeasible"
               for st, t in view.statuses[r]):
            # The memory estimate says this rank does not fit; larger ones take more.
            t = view.statuses[r][0][1]
            view.done, view.stop_rank = True, (ranks[-1] if ranks else None)
            view.stop_reason = f"r={r} {t.user_attrs.get('fail_reason', 'would not fit') if t else 'would not fit'}"
            return view
        vals = [value(t) for st, t in view.statuses[r] if st == "done"]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        if not vals:
            continue  # a rank whose every seed failed is skipped
        ranks.append(r)
        values.append(vals)
        decision = ladder_mod.decide(s.rule, view.base, ranks, values, s.direction, s.max_rank, s.factor)
        view.shares = decision.shares
        if decision.stop:
            view.done, view.stop_reason, view.stop_rank = True, decision.reason, r
            return view
    if all(finished.values()):
        view.done, view.stop_reason, view.stop_rank = True, f"reached max_rank={s.max_rank}", s.ranks[-1]
        return view
    view.pending = [r for r in s.ranks if not finished[r]]
    return view


def candidates(views: Sequence[LadderView], seeds: int, parallel: int) -> tuple[list[tuple[Item, int]], bool]:
    """Jobs to claim, most urgent first, and whether needed work is running elsewhere.

    Bases first, then each ladder's next rank, then (for free workers) up to
    ``parallel`` ranks ahead: speculative doubling. Returns ``(item, depth)`` pairs.
    """
    out: list[tuple[Item, int]] = []
    running = False
    for v in views:
        if v.done:
            continue
        if v.base_status == "todo":
            out.append((Item(v.key, v.combo, 0, 0), -1))
            continue
        if v.base_status == "running":
            running = True
            continue
        for depth, r in enumerate(v.pending[:parallel]):
            for seed, (st, _) in enumerate(v.statuses[r]):
                if st == "todo":
                    out.append((Item(v.key, v.combo, r, seed), depth))
                elif st == "running":
                    running = True
    out.sort(key=lambda pair: pair[1])  # stable: ladders keep their order within a depth
    return out, running


def unneeded_running(view: LadderView) -> list[FrozenTrial]:
    """Running trials of ranks past the stop rank: speculation the stop rule made unnecessary."""
    if not view.done or view.stop_rank is None:
        return []
    return [t for r, sts in view.statuses.items() if r > view.stop_rank
            for st, t in sts if st == "running" and t is not None]


def rungs(view: LadderView) -> list[dict[str, Any]]:
    """The ladder's rungs for ``sweep_summary.json``, up to the stop rank."""
    out = []
    for r, sts in sorted(view.statuses.items()):
        if view.stop_rank is not None and r > view.stop_rank:
            continue  # speculative ranks past the stop are not part of the curve
        ts = [t for _, t in sts if t is not None]
        if not ts:
            continue
        vals = [v for v in (value(t) for t in ts) if v is not None and math.isfinite(v)]
        states = {t.state.name for t in ts}
        if states == {"COMPLETE"}:
            state = "COMPLETE"
        elif vals and "PRUNED" in states:
            state = "PRUNED"
        elif "FAIL" in states and not vals:
            state = "FAIL"
        else:
            state = sorted(states)[0]
        mean = sum(vals) / len(vals) if vals else None
        std = None
        if mean is not None:
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        ua = ts[0].user_attrs
        out.append({
            "rank": r, "alpha": ua.get("alpha"), "values": vals, "mean": mean, "std": std,
            "seeds": [int(t.user_attrs.get("seed", 0)) for t in ts],
            "trial_numbers": [t.number for t in ts],
            "trainable_params": ua.get("trainable_params"),
            "duration_s": sum(float(t.user_attrs.get("duration_s", 0.0)) for t in ts),
            "peak_mem_gb": max([float(t.user_attrs.get("peak_mem_gb", 0.0)) for t in ts] or [0.0]),
            "state": state,
            "fail_reason": "; ".join(str(t.user_attrs.get("fail_reason", "")) for t in ts
                                     if t.state != TrialState.COMPLETE and t.user_attrs.get("fail_reason"))
            or None,
            "output_dirs": [t.user_attrs.get("output_dir") for t in ts],
            "wandb_runs": [t.user_attrs.get("wandb_run") for t in ts],
        })
    return out


def build_ladders(trials: Sequence[FrozenTrial], specs: Sequence[tuple[str, tuple[str, ...]]], s: Settings,
                  objective: str, tolerance: float) -> list[dict[str, Any]]:
    """Each ladder as written to ``sweep_summary.json``: the sweeper's end and the report both use this."""
    from ranksweep.summary import build_ladder

    idx = index_trials(trials)
    built = []
    for key, combo in specs:
        view = evaluate(key, combo, idx, s)
        built.append(build_ladder(key=key, direction=s.direction, objective=objective, base=view.base,
                                  rungs=rungs(view), stop_reason=view.stop_reason or "incomplete",
                                  tolerance=tolerance))
    return built
