"""What to run next, read off the ladders (:mod:`ranksweep.sweep.results`).

Pure functions, so every worker reaches the same plan from the same shared results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ranksweep.sweep.results import BUDGET_SLOT, PRESCREEN_SLOT, JobStatus, Ladder, Rung, Trial


@dataclass(frozen=True)
class Item:
    """One job: (ladder, rank, seed, slot); rank 0 evaluates the base. ``slot`` numbers a rank's search
    trials; ``params`` are the values a further seed repeats (the search's best)."""

    ladder: str
    combo: tuple[str, ...]
    rank: int
    seed: int
    slot: int = 0
    search: bool = False
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # What this job trains differently from its ladder (a budget check's longer run: trainer.max_steps=N)
    overrides: tuple[str, ...] = field(default=(), compare=False, hash=False)

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.ladder, self.rank, self.seed, self.slot)

    @property
    def budget_check(self) -> bool:
        return self.slot == BUDGET_SLOT

    @property
    def prescreen(self) -> bool:
        return self.slot == PRESCREEN_SLOT

    @property
    def role(self) -> str:
        """Its ``role`` attribute and ``trial.role``: base, search (a searched rank's trials), budget (the budget
        check's longer run), prescreen (the nested-rank run) or rung (any other seed of a rank)."""
        return ("base" if self.rank == 0 else "search" if self.search else "budget" if self.budget_check
                else "prescreen" if self.prescreen else "rung")

    @property
    def subdir(self) -> str:
        if self.rank == 0:
            return "base"
        if self.budget_check:
            return f"r{self.rank}-longer"
        if self.prescreen:
            return f"r{self.rank}-nested"
        return f"r{self.rank}-s{self.seed}" + (f"-t{self.slot}" if self.search else "")


def _rung_items(lad: Ladder, rung: Rung, searching: bool) -> tuple[list[Item], bool]:
    """The claimable jobs of one rung, and whether any of its jobs runs now. A prescreen's confirmation searches
    around the values the prescreen trained with (its search items carry them)."""
    items: list[Item] = []
    running = any(j.status == JobStatus.RUNNING for j in rung.jobs)
    pre = lad.prescreen
    around = (dict(pre.trial.searched) if pre is not None and pre.trial is not None and rung.rank in pre.trained
              else {})
    for j in rung.jobs:
        if j.status != JobStatus.TODO:
            continue
        if j.search:
            items.append(Item(lad.key, lad.combo, rung.rank, j.seed, j.slot, search=searching, params=around))
        elif not searching:
            items.append(Item(lad.key, lad.combo, rung.rank, j.seed))
        elif rung.search_finished and rung.best is not None:  # a further seed of the search's best values
            items.append(Item(lad.key, lad.combo, rung.rank, j.seed, params=dict(rung.best.searched)))
    return items, running


def candidates(ladders: Sequence[Ladder], parallel: int, searching: bool = False,
               ranks: Sequence[int] = ()) -> tuple[list[tuple[Item, int]], bool]:
    """Jobs to claim, most urgent first, and whether needed work is running elsewhere.

    Bases first, then each ladder's next rank, then (for free workers) up to ``parallel`` ranks
    ahead: speculative doubling. Returns ``(item, depth)`` pairs.
    """
    out: list[tuple[Item, int]] = []
    running = False
    for lad in ladders:
        if lad.done:
            check = _budget_items(lad)
            running = running or check[1]
            out += [(item, len(lad.rungs)) for item in check[0]]
            continue
        if lad.base_status == JobStatus.TODO:
            out.append((Item(lad.key, lad.combo, 0, 0), -1))
            continue
        if lad.base_status == JobStatus.RUNNING:
            running = True
            continue
        pre = lad.prescreen
        if pre is not None and pre.job.status in (JobStatus.TODO, JobStatus.RUNNING):  # its ranks wait for it
            if pre.job.status == JobStatus.TODO:
                out.append((prescreen_item(lad, ranks), -1))
            running = running or pre.job.status == JobStatus.RUNNING
            continue
        by_rank = {r.rank: r for r in lad.rungs}
        for depth, rank in enumerate(lad.pending[:parallel]):
            items, busy = _rung_items(lad, by_rank[rank], searching)
            running = running or busy
            out += [(item, depth) for item in items]
    out.sort(key=lambda pair: pair[1])  # stable: ladders keep their order within a depth
    return out, running


def prescreen_item(lad: Ladder, ranks: Sequence[int]) -> Item:
    """The nested-rank prescreen job: the top rank, seed 0, trained with nested prefixes of the ladder's ranks
    and never pruned (its values: the claimer's :func:`~ranksweep.sweep.prescreen.centers`)."""
    nested = ",".join(str(r) for r in ranks)
    return Item(lad.key, lad.combo, ranks[-1], 0, PRESCREEN_SLOT, overrides=(f"trial.nested_ranks=[{nested}]",))


def _budget_items(lad: Ladder) -> tuple[list[Item], bool]:
    """A stopped ladder's budget-check jobs still to run (the rank's best values, ``steps`` steps, no
    pruning), and whether one runs now."""
    bc = lad.budget_check
    if bc is None:
        return [], False
    by_rank = {r.rank: r for r in lad.rungs}
    items = []
    for rank, job in zip((bc.lower, bc.upper), bc.jobs):
        best = by_rank[rank].best
        if job.status == JobStatus.TODO and best is not None:
            items.append(Item(lad.key, lad.combo, rank, 0, BUDGET_SLOT, params=dict(best.searched),
                              overrides=(f"trainer.max_steps={bc.steps}", "trainer.epochs=null")))
    return items, any(j.status == JobStatus.RUNNING for j in bc.jobs)


def unneeded_running(lad: Ladder) -> list[Trial]:
    """Running trials of ranks past the stop rank: speculation the stop rule made unnecessary."""
    if not lad.done or lad.stop_rank is None:
        return []
    return [j.trial for r in lad.rungs if r.rank > lad.stop_rank for j in r.jobs
            if j.status == JobStatus.RUNNING and j.trial is not None]


def parent_of(lad: Ladder, item: Item, ranks: Sequence[int]) -> Optional[Trial]:
    """The previous rank's trial to compare with while training (rank-aware pruning): its best search
    trial (or the one still running) for a search slot, the same seed's trial for a further seed."""
    if item.rank == 0 or item.rank == ranks[0]:
        return None
    prev = next((r for r in lad.rungs if r.rank == ranks[ranks.index(item.rank) - 1]), None)
    if prev is None:
        return None
    if item.seed == 0:
        if prev.best is not None:
            return prev.best
        return next((j.trial for j in prev.jobs if j.search and j.status == JobStatus.RUNNING and j.trial), None)
    return next((j.trial for j in prev.jobs if j.seed == item.seed
                 and j.status in (JobStatus.DONE, JobStatus.RUNNING)), None)


def warm_start(lad: Ladder, item: Item, ranks: Sequence[int]) -> Optional[dict[str, Any]]:
    """The values the first search trial of a rank tries: the previous rank's best, when it is known."""
    if not item.search or item.slot != 0 or item.rank == ranks[0]:
        return None
    prev = next((r for r in lad.rungs if r.rank == ranks[ranks.index(item.rank) - 1]), None)
    best = prev.best if prev is not None and prev.search_finished else None
    return dict(best.searched) if best is not None and best.searched else None
