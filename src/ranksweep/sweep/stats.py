"""Noise-aware comparisons in the objective's own units: a paired bootstrap over eval examples.

Every trial stores its per-example eval results (:class:`Examples`): for ``eval_loss`` and
``perplexity`` each example's summed token loss and its number of scored tokens (the objective is
their token-weighted mean, exactly what the trial reports); for ``exact_match`` one 0/1 per
generated example. Two rungs evaluated on the same examples are compared in pairs: a bootstrap
replicate draws the examples (and, with several seeds, the seeds) with replacement and evaluates
both rungs on the same draw, so example difficulty cancels and even one seed gets an error bar.
Seeds share their index across ranks (seed s of r=8 and of r=16 used the same data order).

No library covers this: scipy.stats.bootstrap resamples one array, not a ratio of two paired,
token-weighted sums over a two-level (seed x example) design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Examples:
    """Per-example results of one or more seeds on the same eval examples.

    ``num`` is ``[seeds, examples]``: each example's summed token loss (or 0/1 correct); ``den`` is
    ``[examples]``: its scored tokens (1 for exact match). The objective of seed ``s`` is
    ``sum(num[s]) / sum(den)`` (exp of it for perplexity).
    """

    num: np.ndarray
    den: np.ndarray
    kind: str = "loss"  # loss | perplexity | accuracy: the objective's (ranksweep.objectives.kind_of)
    # The trials' fingerprint of the tokenised eval examples ("": not known): two Examples are paired only
    # on the same one (see ranksweep.sweep.rules.margin.MarginRule).
    fingerprint: str = ""

    @classmethod
    def of(cls, seeds: Sequence[Sequence[float]], den: Sequence[float], kind: str = "loss",
           fingerprint: str = "") -> Examples:
        num = np.asarray([list(s) for s in seeds], dtype=np.float64)
        d = np.asarray(list(den), dtype=np.float64)
        if num.ndim != 2 or num.shape[1] != d.shape[0] or d.shape[0] == 0:
            raise ValueError(f"per-example arrays disagree: {num.shape} vs {d.shape}")
        return cls(num, d, kind, str(fingerprint or ""))

    @property
    def seeds(self) -> int:
        return int(self.num.shape[0])

    @property
    def n(self) -> int:
        return int(self.den.shape[0])

    def value(self) -> float:
        """The objective, averaged over seeds."""
        return float(np.mean(self._transform(self.num.sum(axis=1) / self.den.sum())))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.exp(np.minimum(x, 50.0)) if self.kind == "perplexity" else x


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``confidence`` interval (``lo <= est <= hi`` up to noise)."""

    est: float
    lo: float
    hi: float

    def text(self, pct: int = 95) -> str:
        def f(x: float) -> str:
            return f"{x + 0.0:+.3g}" if abs(x) >= 1e-12 else "0"

        return f"{f(self.est)} ({pct}% CI {f(self.lo)}..{f(self.hi)})"

    def short(self) -> str:
        """``+0.0476 [+0.0421, +0.0536]``: the estimate and its interval, for tables."""
        return f"{self.est + 0.0:+.3g} [{self.lo + 0.0:+.3g}, {self.hi + 0.0:+.3g}]"


_CACHE: dict[tuple, Interval] = {}


def paired_difference(a: Examples, b: Examples, *, orient: float, confidence: float = 0.95, n_boot: int = 2000,
                      seed: int = 0, resample_seeds: bool = True) -> Interval:
    """See :func:`_paired_difference`; the same comparison asked again (every read of a study asks) is
    answered from a cache."""
    key = (a.num.tobytes(), b.num.tobytes(), a.den.tobytes(), orient, confidence, n_boot, seed, resample_seeds)
    got = _CACHE.get(key)
    if got is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        got = _CACHE[key] = _paired_difference(a, b, orient=orient, confidence=confidence, n_boot=n_boot,
                                               seed=seed, resample_seeds=resample_seeds)
    return got


def _paired_difference(a: Examples, b: Examples, *, orient: float, confidence: float, n_boot: int,
                       seed: int, resample_seeds: bool = True) -> Interval:
    """``orient * (value(b) - value(a))`` with a paired percentile-bootstrap interval.

    ``orient`` is +1 where bigger is better and -1 where smaller is better, so a positive result means
    ``b`` is better. Seeds are paired by index (the fewer of the two sets is used); examples by
    position, so both must come from the same eval examples (checked by count here, by fingerprint
    where they are read). The draw is seeded: every worker reaches the same interval. With
    ``resample_seeds=False`` only the examples are redrawn (the training noise is added by
    :func:`with_training_noise` instead).
    """
    if a.n != b.n:
        raise ValueError(f"paired comparison needs the same eval examples, got {a.n} and {b.n}")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        raise ValueError(f"paired comparison needs the same eval examples, got fingerprints {a.fingerprint} "
                         f"and {b.fingerprint}")
    s = min(a.seeds, b.seeds)
    na, nb, den = a.num[:s], b.num[:s], a.den
    est = orient * (_value(b, nb, den) - _value(a, na, den))
    rng = np.random.default_rng(seed)
    chunks = []
    step = max(1, min(n_boot, 2_000_000 // max(a.n, 1)))  # bounded memory for large eval sets
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        counts = rng.multinomial(a.n, np.full(a.n, 1.0 / a.n), size=k).astype(np.float64)  # [k, N]
        tot = counts @ den
        fa = a._transform((counts @ na.T) / tot[:, None])  # [k, S]
        fb = b._transform((counts @ nb.T) / tot[:, None])
        if s > 1 and resample_seeds:  # resample the seeds too, the same seeds for both rungs
            pick = rng.integers(0, s, size=(k, s))
            rows = np.arange(k)[:, None]
            fa, fb = fa[rows, pick], fb[rows, pick]
        chunks.append(orient * (fb.mean(axis=1) - fa.mean(axis=1)))
    diffs = np.concatenate(chunks)
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return Interval(float(est), float(min(lo, est)), float(max(hi, est)))


def _value(e: Examples, num: np.ndarray, den: np.ndarray) -> float:
    return float(np.mean(e._transform(num.sum(axis=1) / den.sum())))


def seed_difference(a: Sequence[float], b: Sequence[float], *, orient: float, confidence: float = 0.95) -> Interval:
    """The same difference without per-example results: paired by seed with a t interval, or a bare
    point (zero width) with one seed. Used for studies whose trials stored no per-example results."""
    s = min(len(a), len(b))
    d = [orient * (b[i] - a[i]) for i in range(s)]
    est = sum(d) / s
    if s < 2:
        return Interval(est, est, est)
    sd = math.sqrt(sum((x - est) ** 2 for x in d) / (s - 1))
    half = _t_quantile(1 - (1 - confidence) / 2, s - 1) * sd / math.sqrt(s)
    return Interval(est, est - half, est + half)


def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class Noise:
    """Training noise: the variance of one training run's value from one seed to another, estimated with
    ``dof`` degrees of freedom (``math.inf``: given, not estimated); ``source`` says from what."""

    var: float
    dof: float
    source: str
    negatives: tuple[tuple[int, int], ...] = ()  # the (rank, 2*rank) doublings that were counted as noise

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)


def pooled_noise(groups: Sequence[tuple[str, Sequence[float]]]) -> Optional[Noise]:
    """The pooled seed-to-seed variance of ``(label, values)`` groups that ran more than one seed (each
    group: one rank's seeds of the same values), or None when none did."""
    num, dof, used = 0.0, 0, []
    for label, values in groups:
        if len(values) > 1:
            mu = sum(values) / len(values)
            num += sum((v - mu) ** 2 for v in values)
            dof += len(values) - 1
            used.append(f"{len(values)} seeds of {label}")
    if not dof:
        return None
    return Noise(num / dof, float(dof), ", ".join(used))


def with_training_noise(iv: Interval, noise: Noise, n_a: int, n_b: int, confidence: float) -> Interval:
    """``iv`` (over the eval examples only) widened by the training noise of two values averaged over
    ``n_a`` and ``n_b`` seeds: standard errors add in quadrature, the quantile is Student's t at the
    Welch-Satterthwaite degrees of freedom (the examples' part counted as exact), so a noise level
    estimated from few seeds widens the interval accordingly."""
    from scipy.stats import norm, t

    z = float(norm.ppf(1 - (1 - confidence) / 2))
    se_ex = max(iv.hi - iv.lo, 0.0) / (2 * z)
    v_train = noise.var * (1.0 / n_a + 1.0 / n_b)
    if v_train <= 0:
        return iv
    total = se_ex ** 2 + v_train
    dof = noise.dof * (total / v_train) ** 2 if math.isfinite(noise.dof) else math.inf
    q = z if not math.isfinite(dof) else float(t.ppf(1 - (1 - confidence) / 2, dof))
    half = q * math.sqrt(total)
    return Interval(iv.est, iv.est - half, iv.est + half)
