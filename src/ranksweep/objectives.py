"""What a trial can return to the sweeper (``objective=``): each objective's direction and kind, in one table.

The direction is the objective's own (a loss is minimized, a match rate maximized): the sweep's study takes
it from here (:attr:`ranksweep.sweep.settings.SweepSettings.direction`). The kind says how per-example
results add up to the objective (:class:`ranksweep.sweep.stats.Examples`). This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OBJECTIVES", "Objective", "direction_of", "kind_of"]


@dataclass(frozen=True)
class Objective:
    """One objective: its name (the metric a trial returns), its direction and its kind."""

    name: str
    direction: str  # minimize | maximize
    kind: str  # loss | perplexity | accuracy: how its per-example results add up (stats.Examples)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("eval_loss", "minimize", "loss"),
    Objective("perplexity", "minimize", "perplexity"),
    Objective("exact_match", "maximize", "accuracy"),
)}


def direction_of(objective: str) -> str:
    """``minimize`` or ``maximize``, as ``objective`` wants (KeyError for an unknown one)."""
    return OBJECTIVES[objective].direction


def kind_of(objective: str) -> str:
    """How ``objective``'s per-example results add up; ``loss`` for a name not in the table."""
    got = OBJECTIVES.get(objective)
    return got.kind if got is not None else "loss"
