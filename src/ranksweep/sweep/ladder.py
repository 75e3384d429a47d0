"""The rank ladder: which LoRA ranks to try, when to stop, and which rank to recommend.

ranksweep trains the same adapter at r = start, start*factor, start*factor**2, ...
(a "ladder", by default a rank-doubling one) and stops once a doubling no longer
buys a real improvement. This module is the pure logic behind that: no torch,
no Optuna, only numbers in and dataclasses out.

Scale-free gains
----------------
Objectives differ wildly in scale and in their floor (an eval loss of 1.16 may
be the task's irreducible loss), so a raw difference such as "0.01 better" says
nothing on its own. Every decision here is taken on the *share of the gain*:
with the untrained base model's objective ``b`` and the per-rank means
``m_0 .. m_k``, improvements are oriented so that bigger is better::

    g(x) = b - x    (direction="minimize")
    g(x) = x - b    (direction="maximize")

and doubling ``k`` wins the share::

    share_k = (g(m_k) - g(m_{k-1})) / max(g(m_0), ..., g(m_k))

i.e. what this doubling added, as a fraction of the best total gain over the
base seen so far. The first rung's share is 1.0 by definition when it improved
over the base at all. When no rung has improved over the base yet, the share
is undefined and reported as ``None`` ("no gain over base"), which every rule
treats as "no gain". Adding a constant to every value (base included) or
multiplying every value by a positive factor changes no share, so it changes
no decision; the tests check that.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

Direction = Literal["minimize", "maximize"]
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")

__all__ = [
    "Decision",
    "Direction",
    "Recommendation",
    "StopRule",
    "decide",
    "find_knee",
    "gain_shares",
    "rank_ladder",
    "recommend",
]


# --------------------------------------------------------------------------- helpers


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _orient(direction: str) -> float:
    """+1 where bigger is better (maximize), -1 where smaller is better (minimize)."""
    _check_direction(direction)
    return 1.0 if direction == "maximize" else -1.0


def _check_curve(ranks: Sequence[int], means: Sequence[float]) -> None:
    if len(ranks) != len(means):
        raise ValueError(f"got {len(ranks)} ranks but {len(means)} means")
    if any(not _is_int(r) or r <= 0 for r in ranks):
        raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
    if any(b <= a for a, b in itertools.pairwise(ranks)):
        raise ValueError(f"ranks must be strictly increasing, got {list(ranks)}")
    if any(not math.isfinite(m) for m in means):
        raise ValueError(f"objective means must be finite, got {list(means)}")


def _fmt_pct(share: float | None) -> str:
    return "no gain over base" if share is None else f"{share * 100:.1f}%"


def _fmt_num(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"


# --------------------------------------------------------------------------- the ladder


def rank_ladder(start_rank: int, factor: int, max_rank: int) -> list[int]:
    """The ranks to try: ``start_rank, start_rank*factor, ...`` up to and including ``max_rank``.

    >>> rank_ladder(8, 2, 256)
    [8, 16, 32, 64, 128, 256]

    The inputs are checked where a user sets them (:class:`ranksweep.sweep.settings.SweepSettings`).
    """
    if not (_is_int(start_rank) and start_rank > 0 and _is_int(factor) and factor >= 2):
        raise ValueError(f"rank_ladder needs start_rank >= 1 and factor >= 2, got {start_rank!r}, {factor!r}")
    ranks = [start_rank]
    while ranks[-1] * factor <= max_rank:
        ranks.append(ranks[-1] * factor)
    return ranks


def gain_shares(base: float | None, means: Sequence[float], direction: str) -> list[float | None]:
    """Each rung's share of the total gain won so far (see the module docstring).

    ``shares[0]`` is 1.0 when the first rung beat ``base``; ``shares[k]`` for
    ``k >= 1`` is ``(g(m_k) - g(m_{k-1})) / max(g(m_0..m_k))``. A share is
    ``None`` when no rung up to ``k`` has improved over the base (the
    denominator is <= 0). A negative share means that doubling made things worse.

    With ``base=None`` the first rung stands in for the base: ``shares[0]`` is
    ``None`` and later shares are shares of the gain won since the first rung.
    """
    sign = _orient(direction)
    if not means:
        return []
    ref = means[0] if base is None else base
    gains = [sign * (m - ref) for m in means]
    shares: list[float | None] = []
    best = -math.inf
    for k, gain in enumerate(gains):
        best = max(best, gain)
        if best <= 0:
            shares.append(None)
        elif k == 0:
            shares.append(1.0)
        else:
            shares.append((gain - gains[k - 1]) / best)
    return shares


# --------------------------------------------------------------------------- the stop rule


@dataclass
class StopRule:
    """When to stop climbing the ladder.

    ``min_gain`` (default 0.05) is the smallest share of the total gain a
    doubling must add to count as "still worth it"; ``patience`` (default 2) is
    how many consecutive doublings must fall below it (or within seed noise)
    before the sweep stops; ``noise_z`` (default 2.0) is how many standard
    errors of the difference a doubling's improvement must exceed to count as
    real when several seeds ran.

    Why these defaults: a doubling doubles the adapter's parameters and
    roughly its optimizer memory, so it must buy something a user would notice;
    5% of everything LoRA has won over the base model is about the smallest
    improvement that survives seed-to-seed noise in typical fine-tunes (and
    the recommendation uses the same 5% as its tolerance). On the textbook
    curve where every doubling buys half the previous one, the shares run
    33%, 14%, 6.7%, 3.2%, 1.6% ..., so the rule keeps going while a doubling
    still adds 6.7% and stops only after two doublings of 3.2% and 1.6%.
    ``patience=2`` rather than 1 because a single flat or slightly worse rung
    is common (an unlucky seed, a learning rate that suits one rank less) and
    the curve often resumes improving; two in a row is much rarer, and a third
    extra rung would double the cost of the most expensive run again.
    """

    min_gain: float = 0.05
    patience: int = 2
    noise_z: float = 2.0


@dataclass
class Decision:
    """What :func:`decide` concluded after the last finished rung.

    ``stop`` says whether to stop; ``reason`` says why in words ("continue" when
    not stopping); ``next_rank`` is the rank to train next (``None`` when
    stopping); ``shares`` are the rungs' gain shares (:func:`gain_shares`).
    """

    stop: bool
    reason: str
    next_rank: int | None
    shares: list[float | None] = field(default_factory=list)


def _below(share: float | None, min_gain: float) -> bool:
    """A doubling with no gain over the base (``None``) or a worse result counts as below."""
    return share is None or share < min_gain


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _pooled_std(values: Sequence[Sequence[float]]) -> float | None:
    """Pooled sample standard deviation over the ranks that ran more than one seed."""
    num = 0.0
    dof = 0
    for seeds in values:
        n = len(seeds)
        if n > 1:
            mu = _mean(seeds)
            num += sum((v - mu) ** 2 for v in seeds)
            dof += n - 1
    return math.sqrt(num / dof) if dof else None


def decide(
    rule: StopRule,
    base: float,
    ranks: list[int],
    values: list[list[float]],
    direction: str,
    max_rank: int,
    factor: int,
) -> Decision:
    """Decide, after the rungs in ``ranks`` finished, whether to train the next rank.

    ``values[i]`` holds rank ``ranks[i]``'s objective, one value per seed
    (finished trials only). The sweep stops when, checked in this order:

    1. the gain share (:func:`gain_shares`) of each of the last ``rule.patience``
       doublings is below ``rule.min_gain``; a doubling that made things worse
       or that has no gain over the base counts as below;
    2. some rank ran more than one seed, and each of the last ``rule.patience``
       doublings improved the mean by at most ``rule.noise_z`` standard errors
       of the difference, ``s_p * sqrt(1/n_a + 1/n_b)``, where ``s_p`` is the
       sample standard deviation pooled over the ranks with several seeds;
    3. the next rank, ``ranks[-1] * factor``, would exceed ``max_rank``.

    Otherwise it continues with ``next_rank = ranks[-1] * factor``.
    """
    sign = _orient(direction)
    if not ranks:
        raise ValueError("decide needs at least one finished rung")
    if len(values) != len(ranks):
        raise ValueError(f"got {len(ranks)} ranks but {len(values)} value lists")
    if any(len(v) == 0 for v in values):
        raise ValueError("every rung needs at least one finished value")
    means = [_mean(v) for v in values]
    _check_curve(ranks, means)
    if not math.isfinite(base):
        raise ValueError(f"base must be finite, got {base!r}")

    shares = gain_shares(base, means, direction)
    p = rule.patience
    last = range(len(ranks) - p, len(ranks))

    if len(ranks) > p:
        # 1. the share rule
        if all(_below(shares[k], rule.min_gain) for k in last):
            parts = ", ".join(f"r={ranks[k]}: {_fmt_pct(shares[k])}" for k in last)
            noun = "doubling" if p == 1 else "doublings"
            return Decision(
                True,
                f"gain share below {rule.min_gain * 100:g}% for {p} {noun} ({parts})",
                None,
                shares,
            )
        # 2. the seed-noise rule
        within = _within_seed_noise(rule, ranks, values, means, sign)
        if within is not None:
            noun = "doubling" if p == 1 else "doublings"
            return Decision(True, f"improvement within seed noise for {p} {noun} ({within})", None, shares)

    # 3. the budget
    nxt = ranks[-1] * factor
    if nxt > max_rank:
        if ranks[-1] == max_rank:
            reason = f"reached max_rank={max_rank}"
        else:
            reason = f"reached max_rank={max_rank} (next rank r={nxt} would exceed it)"
        return Decision(True, reason, None, shares)
    return Decision(False, "continue", nxt, shares)


def _within_seed_noise(rule: StopRule, ranks: list[int], values: list[list[float]], means: list[float],
                       sign: float) -> Optional[str]:
    """The stop reason's details when each of the last ``rule.patience`` doublings improved the mean by at
    most ``rule.noise_z`` standard errors (pooled over ranks with several seeds); else None."""
    s_p = _pooled_std(values)
    if s_p is None:
        return None
    parts = []
    for k in range(len(ranks) - rule.patience, len(ranks)):
        diff = sign * (means[k] - means[k - 1])
        se = s_p * math.sqrt(1 / len(values[k]) + 1 / len(values[k - 1]))
        if diff > rule.noise_z * se:
            return None
        parts.append(f"r={ranks[k]}: {diff:+.4g} <= {rule.noise_z:g}*SE {se:.4g}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- knee and recommendation


def find_knee(ranks: Sequence[int], means: Sequence[float], direction: str) -> int | None:
    """The knee of the objective-vs-rank curve on the ``log2(r)`` axis, or ``None``.

    Uses :class:`kneed.KneeLocator` (curve ``convex``/``decreasing`` for a
    minimized objective, ``concave``/``increasing`` for a maximized one).

    Robustness: real curves are not monotone. Past the best rank they wobble
    or get worse (overfitting; in the LoRA paper's GPT-2 Medium/E2E curve r=1024
    is worse than r=16..512), and cutting the curve at its best point leaves too
    few, too irregular points for a knee at all. So the knee is fitted on the
    running best (cumulative min for minimize, max for maximize): regressions
    become plateau, which is what they are for the question "is a bigger rank
    worth it". The knee found there is mapped back to the smallest rank that
    actually achieved that running-best value.

    Fewer than 3 points, a flat curve, or kneed finding no knee give ``None``.
    """
    sign = _orient(direction)
    _check_curve(ranks, means)
    if len(ranks) < 3:
        return None
    env: list[float] = []
    owner: list[int] = []  # index of the rung that achieved the running best
    for i, m in enumerate(means):
        if not env or sign * (m - env[-1]) > 0:
            env.append(m)
            owner.append(i)
        else:
            env.append(env[-1])
            owner.append(owner[-1])
    if env[0] == env[-1]:
        return None
    from kneed import KneeLocator  # local import: kneed pulls in scipy, keep `import ranksweep.ladder` cheap

    x = [math.log2(r) for r in ranks]
    curve, kdir = ("convex", "decreasing") if direction == "minimize" else ("concave", "increasing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns "No knee/elbow found"
        try:
            knee_x = KneeLocator(x, env, curve=curve, direction=kdir).knee
        except (ValueError, ZeroDivisionError, IndexError):
            return None
    if knee_x is None:
        return None
    idx = min(range(len(x)), key=lambda i: abs(x[i] - float(knee_x)))
    return ranks[owner[idx]]


@dataclass
class Recommendation:
    """The rank worth paying for.

    ``rank`` is the recommended rank, ``knee`` the knee of the curve
    (:func:`find_knee`, may be ``None``), ``best_rank`` the smallest rank with
    the best objective, ``tolerance_abs`` the tolerance in objective units and
    ``why`` one sentence explaining the choice with numbers.
    """

    rank: int
    knee: int | None
    best_rank: int
    tolerance_abs: float
    why: str


def recommend(
    base: float | None,
    ranks: Sequence[int],
    means: Sequence[float],
    direction: str,
    tolerance: float = 0.05,
) -> Recommendation:
    """The smallest rank whose objective is within ``tolerance`` of the best rank's.

    ``tolerance`` is a share of the total gain: of ``g(best)`` over ``base``
    when the base model's objective is known, else of the curve's range
    ``max(means) - min(means)``. When there is no gain at all (every rank no
    better than the base, or a flat curve without a base) the smallest rank is
    recommended and ``why`` says so. Scale-free like everything here: adding a
    constant to all values or scaling them by a positive factor gives the same
    ranks.
    """
    sign = _orient(direction)
    if not ranks:
        raise ValueError("recommend needs at least one rank")
    _check_curve(ranks, means)
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if base is not None and not math.isfinite(base):
        raise ValueError(f"base must be finite or None, got {base!r}")

    best_i = max(range(len(means)), key=lambda i: (sign * means[i], -i))
    best = means[best_i]
    knee = find_knee(ranks, means, direction)
    knee_txt = f"the knee on log2(r) is at r={knee}" if knee is not None else "no knee on log2(r)"

    if base is None:
        total = max(means) - min(means)
        what = "of the curve's range"
    else:
        total = sign * (best - base)
        what = "of the total gain"
    if total <= 0:
        why = (
            f"r={ranks[0]}: no gain "
            + ("over the base model" if base is not None else "across ranks")
            + f" (best r={ranks[best_i]} {_fmt_num(best)}"
            + (f", base {_fmt_num(base)}" if base is not None else "")
            + f"), so the smallest rank; {knee_txt}"
        )
        return Recommendation(ranks[0], knee, ranks[best_i], 0.0, why)

    tol_abs = tolerance * total
    # A few thousand ulps of slack so that float rounding after shifting/scaling never flips a tie.
    eps = 1e-12 * max(abs(best), abs(base) if base is not None else 0.0) + 1e-9 * total
    rec_i = next(i for i in range(len(means)) if sign * (best - means[i]) <= tol_abs + eps)
    why = (
        f"r={ranks[rec_i]} is within {tolerance * 100:g}% {what} ({_fmt_num(tol_abs)}) "
        f"of the best r={ranks[best_i]} ({_fmt_num(best)}); {knee_txt}"
    )
    return Recommendation(ranks[rec_i], knee, ranks[best_i], tol_abs, why)
