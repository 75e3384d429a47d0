"""Checking a sweep's whole plan before anything is stored: every ladder, every searched value, the ranks.

A sweep's trials are composed one by one, long after the study was created; a value only some trials get
(the second choice of a search, the top of an interval, the last rank, the second value of an axis) would
fail mid-sweep, after trials were recorded, and the study left behind would then refuse the corrected
command as another search space. So :func:`check_plan` composes, for every ladder, the job config of:

- the ladder's first rank at the *probe* values (each searched key's first choice or low end): the trial
  identity the study stores, as it always was, so that existing studies still resume; a failure here is
  an axis value of the ladder, a probe value, or the config itself (its own error, as before);
- every other value each searched key can take (every choice of ``choice(...)``/``range(...)``, the upper
  end of an interval) and the last rank, each with the other keys at valid values.

What Optuna can propose from an interval lies between its ends: the samplers clip a float to
``[low, high)`` (log or not) and an int to ``[low, high]``, with ``high`` lowered to ``low + k * step``
when the distribution is built. The config's checks of numbers are range checks (``> 0``, ``in [0, 1)``,
``>= 0``, a positive integer), so checking both ends checks every value in between; a float interval on
an integer key fails at its ends already (``1.0`` is not an integer). A float interval's upper end is
itself never proposed: when it fails, the largest value Optuna proposes (the float just below it) is
checked instead, so ``interval(0, 1)`` is fine for a key that must be below 1.

Each check is one Hydra composition (0.1-0.3 s). Identical ones are composed once, and the values of
different keys are checked together, row by row (the second choice of each key with the upper end of
each interval and the last rank, then the third choices, ...): a ladder costs ``1 + max(values - 1)``
compositions, where it cost one before. Only when a row fails is each of its values composed alone, to
name the culprit. (The base evaluation, rank 0, is not composed: it runs the first rank's config with
``trainer.max_steps=0``, ``data.metric_examples=0`` and the searched keys at their configured values.)
A bad value is one line that names its key and value first, then the config's own reason::

    hydra.sweeper.search.trainer.lr: choice value -1: trainer.lr must be a positive number, got -1.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from ranksweep.errors import ConfigError
from ranksweep.sweep import identity
from ranksweep.sweep.plan import Item

__all__ = ["check_plan", "probe_values"]

K = "hydra.sweeper.search"
RANK = "lora.r"  # the rank's column in a row (never a searched key: the search refuses it)


def probe_values(searched: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The values the trial identity is composed with: each key's low end or first choice."""
    return {k: getattr(d, "low", None) if hasattr(d, "low") else d.choices[0] for k, d in searched.items()}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class _Point:
    """One value to check: a searched key's value, or a rank (key ``RANK``)."""

    key: str
    value: Any
    head: str  # what the error line starts with: the key a user edits, then the value
    fallback: Any = None  # a float interval's upper end: the largest value Optuna proposes instead


def _points(key: str, dist: BaseDistribution, text: str) -> list[_Point]:
    """The values of one searched key that are checked, its probe value first."""
    if isinstance(dist, CategoricalDistribution):
        kind = "range" if re.match(r"\s*(tag\(.*,\s*)?range\s*\(", text) else "choice"
        return [_Point(key, v, f"{K}.{key}: {kind} value {_shown(v)}") for v in dist.choices]
    low, high = dist.low, dist.high  # type: ignore[attr-defined]  # an int's high is already step-aligned
    below = (math.nextafter(float(high), float(low))
             if isinstance(dist, FloatDistribution) and dist.step is None else None)
    return [_Point(key, low, f"{K}.{key}: interval lower end {_shown(low)}"),
            _Point(key, high, f"{K}.{key}: interval upper end {_shown(high)}", below)]


def _rank_points(ranks: Sequence[int]) -> list[_Point]:
    first, last = ranks[0], ranks[-1]
    out = [_Point(RANK, first, f"hydra.sweeper.start_rank: rank {first}")]
    if last != first:  # the ranks between are range-checked (lora.r: a positive integer) like these two
        out.append(_Point(RANK, last, f"hydra.sweeper.max_rank: rank {last}"))
    return out


def _describe(exc: BaseException) -> str:
    from ranksweep.compose import describe_error

    return str(exc) if isinstance(exc, ConfigError) else describe_error(exc)


class _Composer:
    """``run_config(item, values)``, each distinct job config composed once; a failure is returned."""

    def __init__(self, run_config: Callable[[Item, Optional[dict]], Any]) -> None:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        self.run_config = run_config
        self.fails = (ConfigError, HydraException, OmegaConfBaseException)
        self.seen: dict[tuple, tuple[Any, Optional[BaseException]]] = {}

    def __call__(self, ladder: str, combo: tuple[str, ...], rank: int,
                 values: dict[str, Any]) -> tuple[Any, Optional[BaseException]]:
        # repr tells 1, 1.0 and '1' apart: they are different overrides
        key = (combo, rank, tuple(sorted((k, repr(v)) for k, v in values.items())))
        if key not in self.seen:
            try:
                self.seen[key] = (self.run_config(Item(ladder, combo, rank, 0), dict(values)), None)
            except self.fails as exc:
                self.seen[key] = (None, exc)
        return self.seen[key]


def check_plan(run_config: Callable[[Item, Optional[dict]], Any], ladders: Sequence[tuple[str, tuple[str, ...]]],
               search: dict[str, str], searched: dict[str, BaseDistribution],
               ranks: Sequence[int]) -> dict[str, dict]:
    """Check every job config the sweep can run (see the module's doc); return each ladder's trial identity.

    ``run_config(item, values)`` is the validated run config of a job (:meth:`RankSweep._run_config`);
    ``search`` the sweep strings of ``searched``, the distributions. Raises a one-line error naming the
    first bad key and value, before anything is written."""
    compose = _Composer(run_config)
    probe = probe_values(searched)
    start = ranks[0]
    columns = [_points(k, d, str(search.get(k, ""))) for k, d in searched.items()] + [_rank_points(ranks)]
    idents: dict[str, dict] = {}
    for n, (ladder, combo) in enumerate(ladders):
        identity.check_label("ladder", ladder)
        note = f" (ladder {ladder})" if n else ""  # a value that passed in the ladders before: this one's
        run, err = compose(ladder, combo, start, probe)
        if err is not None:
            _explain_probe(compose, ladder, combo, start, probe, columns, err, note)
        idents[ladder] = identity.trial_identity(run, searched)
        _check_rows(compose, ladder, combo, start, probe, [list(c) for c in columns], note)
    return idents


def _check_rows(compose: _Composer, ladder: str, combo: tuple[str, ...], start: int, probe: dict[str, Any],
                columns: list[list[_Point]], note: str) -> None:
    """Row i sets every key's i-th value at once (keys with fewer values stay at the probe); a failed row
    is taken apart to name its culprit."""

    def job(points: Sequence[_Point]) -> tuple[int, dict[str, Any]]:
        values = {**probe, **{p.key: p.value for p in points if p.key != RANK}}
        return next((p.value for p in points if p.key == RANK), start), values

    i, rows = 1, max(len(c) for c in columns) - 1
    while i <= rows:
        row = [c[i] for c in columns if i < len(c)]
        _, err = compose(ladder, combo, *job(row))
        if err is None:
            i += 1
            continue
        for p in row:
            _, alone = compose(ladder, combo, *job([p])) if len(row) > 1 else (None, err)
            if alone is None:
                continue
            if p.fallback is not None and compose(ladder, combo, *job([replace(p, value=p.fallback)]))[1] is None:
                # Optuna never proposes the upper end itself; the values it proposes pass: check the row again
                col = next(c for c in columns if i < len(c) and c[i] is p)
                col[i] = replace(p, value=p.fallback, fallback=None)
                break
            raise ConfigError(f"{p.head}{note}: {_describe(alone)}") from None
        else:  # each value passes alone, not together: Optuna may propose them together
            both = " with ".join(f"{p.key}={_shown(p.value)}" for p in row)
            raise ConfigError(f"{K}: {both} together{note}: {_describe(err)}") from None


def _explain_probe(compose: _Composer, ladder: str, combo: tuple[str, ...], start: int, probe: dict[str, Any],
                   columns: list[list[_Point]], err: BaseException, note: str) -> None:
    """Raise the reason the ladder's first job (the probe values, the first rank) fails: a probe value, an
    axis value of the ladder, or the config itself (its own error, as before any search)."""
    _, bare = compose(ladder, combo, start, {})
    if bare is None:  # the config is fine without the searched values: one of them is not
        heads = {c[0].key: c[0].head for c in columns}
        for k, v in probe.items():
            _, alone = compose(ladder, combo, start, {k: v})
            if alone is not None:
                raise ConfigError(f"{heads[k]}{note}: {_describe(alone)}") from None
        both = " with ".join(f"{k}={_shown(v)}" for k, v in probe.items())
        raise ConfigError(f"{K}: {both} together{note}: {_describe(err)}") from None
    if combo and compose("default", (), start, {})[1] is None:  # the fixed overrides pass: an axis value fails
        for part in combo:
            _, alone = compose(ladder, (part,), start, {})
            if alone is not None:
                raise ConfigError(f"{part}: {_describe(alone)}") from None
        raise ConfigError(f"{ladder}: {_describe(bare)}") from None
    raise bare  # the fixed overrides or the config files: their own one-line error
