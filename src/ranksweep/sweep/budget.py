"""Budget honesty: is a rank's eval curve still falling at the end, when do two ranks' curves part,
and how much more training would settle a ladder whose top ranks are all still improving.

Read from the intermediate values Optuna already holds (eval losses at ``trainer.eval_every``
steps; lower is better whatever the objective). A short run ranks how fast each rank learns, not
what it can hold (capacity binds late: low ranks track full fine-tuning until they run out), so a
recommendation made while the top ranks still improve is a budget answer, not a capacity answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional


def last_drop(curve: Mapping[int, float]) -> Optional[float]:
    """The eval loss won over the last eval interval (positive: still falling), or None."""
    steps = sorted(curve)
    if len(steps) < 2:
        return None
    return float(curve[steps[-2]] - curve[steps[-1]])


def still_falling(curve: Mapping[int, float], margin: float) -> Optional[bool]:
    """Whether the last eval interval won more than ``margin`` (None: too few evals to tell)."""
    drop = last_drop(curve)
    return None if drop is None else drop > margin


def separation_step(a: Mapping[int, float], b: Mapping[int, float], margin: float) -> Optional[int]:
    """The first eval step from which ``b`` stays below ``a`` by more than ``margin`` to the end (None:
    the curves never part, or share no steps)."""
    common = sorted(set(a) & set(b))
    found: Optional[int] = None
    for s in common:
        if a[s] - b[s] > margin:
            found = s if found is None else found
        else:
            found = None
    return found


def more_steps(curve: Mapping[int, float], margin: float) -> Optional[float]:
    """How many times the steps run would bring the per-interval gain under ``margin``, assuming the
    gains keep shrinking at their last ratio; None when the curve is not yet bending (no estimate)."""
    steps = sorted(curve)
    if len(steps) < 3:
        return None
    d_prev = curve[steps[-3]] - curve[steps[-2]]
    d_last = curve[steps[-2]] - curve[steps[-1]]
    if d_last <= margin:
        return 1.0
    if d_prev <= 0 or not 0 < d_last / d_prev < 1:
        return None
    q = d_last / d_prev
    n = math.ceil(math.log(margin / d_last) / math.log(q))
    interval = steps[-1] - steps[-2]
    return (steps[-1] + n * interval) / steps[-1]
