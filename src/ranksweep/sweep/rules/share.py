"""The share rule (``hydra.sweeper.stop_rule=share``): a doubling must add a share of the gain over the base.

With the untrained base model's value ``b`` and the per-rank means ``m_0 .. m_k``, improvements are oriented
so that bigger is better (``g(x) = b - x`` when minimizing, ``x - b`` when maximizing), and doubling ``k``
wins the share ``(g(m_k) - g(m_{k-1})) / max(g(m_0), ..., g(m_k))``: what it added, as a fraction of the
best total gain so far (``None``, "no gain over base", while no rung beat the base). Shifting or scaling
every value, base included, changes no share and so no decision. Why these defaults: ``docs/rank-method.md``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ranksweep.sweep.rules import Comparison, Decision, Recommendation, Step, orient

__all__ = ["ShareRule", "find_knee", "gain_shares"]


@dataclass(frozen=True)
class ShareRule:
    """Stop once each of the last ``patience`` doublings added less than ``min_gain`` of the total gain over
    the base, or (with several seeds) improved by at most ``noise_z`` standard errors; recommend the
    smallest rank within ``tolerance`` of the total gain of the best."""

    direction: str = "minimize"
    min_gain: float = 0.05
    patience: int = 2
    noise_z: float = 2.0
    tolerance: float = 0.05
    name: ClassVar[str] = "share"

    def __post_init__(self) -> None:
        orient(self.direction)
        _require(_is_num(self.min_gain) and 0 <= self.min_gain < 1, "min_gain", "in [0, 1)", self.min_gain)
        _require(_is_int(self.patience) and self.patience >= 1, "patience", "an integer >= 1", self.patience)
        _require(_is_num(self.noise_z) and math.isfinite(self.noise_z) and self.noise_z >= 0, "noise_z",
                 "a finite number >= 0", self.noise_z)
        _require(_is_num(self.tolerance) and 0 <= self.tolerance < 1, "tolerance", "in [0, 1)", self.tolerance)

    @classmethod
    def from_settings(cls, s: Any) -> ShareRule:
        """The rule of :class:`~ranksweep.sweep.settings.SweepSettings` ``s``."""
        return cls(s.direction, min_gain=s.min_gain, patience=s.patience, tolerance=s.tolerance)

    def decide(self, steps: Sequence[Step], base: Any) -> Decision:
        """Stop when, checked in this order:

        1. the gain share (:func:`gain_shares`) of each of the last ``patience`` doublings is below
           ``min_gain``; a doubling that made things worse or that has no gain over the base counts as below;
        2. some rank ran more than one seed, and each of the last ``patience`` doublings improved the mean by
           at most ``noise_z`` standard errors of the difference, ``s_p * sqrt(1/n_a + 1/n_b)``, where ``s_p``
           is the sample standard deviation pooled over the ranks with several seeds.

        Rungs without a value are skipped; the last one without a value waits for the next rung."""
        base = _base_value(base)
        if not steps:
            raise ValueError("decide needs at least one finished rung")
        if steps[-1].value is None:
            return Decision(False, "continue")
        have = [s for s in steps if s.value is not None]
        ranks = [s.rank for s in have]
        values = [list(s.seed_values) or [float(s.value)] for s in have]  # type: ignore[arg-type]
        means = [_mean(v) for v in values]
        _check_curve(ranks, means)
        if base is None or not math.isfinite(base):
            raise ValueError(f"base must be finite, got {base!r}")
        shares = gain_shares(base, means, self.direction)
        p = self.patience
        noun = "doubling" if p == 1 else "doublings"
        last = range(len(ranks) - p, len(ranks))
        if len(ranks) > p:
            if all(_below(shares[k], self.min_gain) for k in last):
                parts = ", ".join(f"r={ranks[k]}: {_fmt_pct(shares[k])}" for k in last)
                return Decision(True, f"gain share below {self.min_gain * 100:g}% for {p} {noun} ({parts})",
                                None, shares)
            within = self._within_seed_noise(ranks, values, means)
            if within is not None:
                return Decision(True, f"improvement within seed noise for {p} {noun} ({within})", None, shares)
        return Decision(False, "continue", None, shares)

    def _within_seed_noise(self, ranks: list[int], values: list[list[float]], means: list[float]) -> Optional[str]:
        """The stop reason's details when each of the last ``patience`` doublings improved the mean by at most
        ``noise_z`` standard errors (pooled over ranks with several seeds); else None."""
        s_p = _pooled_std(values)
        if s_p is None:
            return None
        sign = orient(self.direction)
        parts = []
        for k in range(len(ranks) - self.patience, len(ranks)):
            diff = sign * (means[k] - means[k - 1])
            se = s_p * math.sqrt(1 / len(values[k]) + 1 / len(values[k - 1]))
            if diff > self.noise_z * se:
                return None
            parts.append(f"r={ranks[k]}: {diff:+.4g} <= {self.noise_z:g}*SE {se:.4g}")
        return ", ".join(parts)

    def recommend(self, steps: Sequence[Step], base: Any) -> Optional[Recommendation]:
        """The smallest rank whose value is within ``tolerance`` of the best rank's (None without a value).

        ``tolerance`` is a share of the total gain: of ``g(best)`` over ``base`` when the base model's value is
        known, else of the curve's range. With no gain at all (every rank no better than the base, or a flat
        curve without a base) the smallest rank is recommended and the reason says so."""
        base = _base_value(base)
        have = [s for s in steps if s.value is not None]
        if not have:
            return None
        ranks = [s.rank for s in have]
        means = [float(s.value) for s in have]  # type: ignore[arg-type]
        sign = orient(self.direction)
        _check_curve(ranks, means)
        if base is not None and not math.isfinite(base):
            raise ValueError(f"base must be finite or None, got {base!r}")
        best_i = max(range(len(means)), key=lambda i: (sign * means[i], -i))
        best = means[best_i]
        knee = find_knee(ranks, means, self.direction)
        total = max(means) - min(means) if base is None else sign * (best - base)
        if total <= 0:
            why = self._why(ranks[0], ranks[best_i], best, base, knee)
            return Recommendation(ranks[0], ranks[best_i], 0.0, why, knee)
        tol_abs = self.tolerance * total
        # A few thousand ulps of slack so that float rounding after shifting/scaling never flips a tie.
        eps = 1e-12 * max(abs(best), abs(base) if base is not None else 0.0) + 1e-9 * total
        rec_i = next(i for i in range(len(means)) if sign * (best - means[i]) <= tol_abs + eps)
        return Recommendation(ranks[rec_i], ranks[best_i], tol_abs,
                              self._why(ranks[rec_i], ranks[best_i], best, base, knee, tol_abs), knee)

    def _why(self, rank: int, best_rank: int, best: float, base: Optional[float], knee: Optional[int],
             tol_abs: Optional[float] = None) -> str:
        """The recommendation in one sentence (``tol_abs`` None: there was no gain at all)."""
        knee_txt = f"the knee on log2(r) is at r={knee}" if knee is not None else "no knee on log2(r)"
        if tol_abs is None:
            over = "over the base model" if base is not None else "across ranks"
            base_txt = f", base {_fmt_num(base)}" if base is not None else ""
            return (f"r={rank}: no gain {over} (best r={best_rank} {_fmt_num(best)}{base_txt}), so the smallest rank; "
                    f"{knee_txt}")
        what = "of the curve's range" if base is None else "of the total gain"
        return (f"r={rank} is within {self.tolerance * 100:g}% {what} ({_fmt_num(tol_abs)}) "
                f"of the best r={best_rank} ({_fmt_num(best)}); {knee_txt}")

    def compare(self, steps: Sequence[Step], rec: Optional[Recommendation]) -> Optional[Comparison]:
        """None: the share rule reads no intervals (its error bars are the seeds' spread)."""
        return None

    def loss_margin(self, loss: float) -> Optional[float]:
        """None: the share rule has no margin to read the eval curves with."""
        return None

    def describe(self, objective: str) -> list[tuple[str, str]]:
        return [("stop rule", "share of the gain over the base"), ("min gain", f"{self.min_gain:g}"),
                ("tolerance", f"{self.tolerance:g}"), ("patience", f"{self.patience} doubling(s)")]


def gain_shares(base: Optional[float], means: Sequence[float], direction: str) -> list[Optional[float]]:
    """Each rung's share of the total gain won so far (see the module docstring).

    ``shares[0]`` is 1.0 when the first rung beat ``base``; ``shares[k]`` for ``k >= 1`` is
    ``(g(m_k) - g(m_{k-1})) / max(g(m_0..m_k))``. A share is ``None`` when no rung up to ``k`` has improved
    over the base; a negative share means that doubling made things worse. With ``base=None`` the first
    rung stands in for the base: ``shares[0]`` is ``None`` and later shares are of the gain since it.
    """
    sign = orient(direction)
    if not means:
        return []
    ref = means[0] if base is None else base
    gains = [sign * (m - ref) for m in means]
    shares: list[Optional[float]] = []
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


def find_knee(ranks: Sequence[int], means: Sequence[float], direction: str) -> Optional[int]:
    """The knee of the value-vs-rank curve on the ``log2(r)`` axis (:class:`kneed.KneeLocator`), or ``None``.

    Fitted on the running best (cumulative min for minimize, max for maximize), so that a regression past
    the best rank is a plateau rather than a curve too irregular for a knee; mapped back to the smallest rank
    that reached that running best. Fewer than 3 points, a flat curve, or no knee found give ``None``.
    """
    sign = orient(direction)
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
    from kneed import KneeLocator  # local import: kneed pulls in scipy

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


# --------------------------------------------------------------------------- helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, name: str, what: str, got: object) -> None:
    if not ok:
        raise ValueError(f"ShareRule: {name} must be {what}, got {got!r}")


def _check_curve(ranks: Sequence[int], means: Sequence[float]) -> None:
    if len(ranks) != len(means):
        raise ValueError(f"got {len(ranks)} ranks but {len(means)} means")
    if any(not _is_int(r) or r <= 0 for r in ranks):
        raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
    if any(b <= a for a, b in itertools.pairwise(ranks)):
        raise ValueError(f"ranks must be strictly increasing, got {list(ranks)}")
    if any(not math.isfinite(m) for m in means):
        raise ValueError(f"objective means must be finite, got {list(means)}")


def _below(share: Optional[float], min_gain: float) -> bool:
    """A doubling with no gain over the base (``None``) or a worse result counts as below."""
    return share is None or share < min_gain


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _pooled_std(values: Sequence[Sequence[float]]) -> Optional[float]:
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


def _fmt_pct(share: Optional[float]) -> str:
    return "no gain over base" if share is None else f"{share * 100:.1f}%"


def _fmt_num(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"


def _base_value(base: Any) -> Optional[float]:
    """The untrained base's value: given as a number or as a rank-0 :class:`Step`."""
    return base.value if isinstance(base, Step) else base
