"""Searching each rank's training settings (the learning rate first) with Optuna, rung by rung.

``hydra.sweeper.search`` is declared the Hydra-Optuna way, one sweep string per key::

    hydra.sweeper.search: {trainer.lr: "tag(log, interval(5e-5, 5e-3))", lora.dropout: "choice(0.0, 0.05)"}

Within each rung (one ladder, one rank) an Optuna sampler proposes the values and an Optuna pruner
(successive halving or Hyperband) stops the losing ones early. Both must see only that rung's trials
-- a learning rate good for r=8 says little about r=64 under some alpha rules -- while the study
holds every trial of the sweep. Optuna has no per-group sampling or pruning, so :class:`RungView`
hands them a view of the study that lists only one rung's search trials; everything else (storage,
directions, system attributes) is the real study's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Optional

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection

from ranksweep.errors import ConfigError
from ranksweep.sweep import keys

K = "hydra.sweeper.search"


def distribution(key: str, text: str) -> BaseDistribution:
    """An Optuna distribution from a Hydra sweep string: ``choice(...)``, ``range(...)``,
    ``interval(a, b)`` and ``tag(log, interval(a, b))``; the same rules as hydra-optuna-sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep, Transformer

    try:
        o = OverridesParser.create().parse_override(f"{key}={text}")
    except Exception as exc:  # Hydra's grammar error
        raise ConfigError(f"{K}.{key}: cannot parse {text!r}: {' '.join(str(exc).split())[:160]}") from None
    if not o.is_sweep_override():
        raise ConfigError(f"{K}.{key}: {text!r} is one value; search with choice(a, b, ...), range(...), "
                          "interval(lo, hi) or tag(log, interval(lo, hi))")
    if o.is_choice_sweep() or o.is_range_sweep():
        choices = list(o.sweep_iterator(transformer=Transformer.encode))
        if len(choices) < 2:
            raise ConfigError(f"{K}.{key}: {text!r} offers one choice; give two or more")
        return CategoricalDistribution(choices)
    value = o.value()
    assert isinstance(value, IntervalSweep)
    lo, hi, log = value.start, value.end, "log" in value.tags
    if lo is None or hi is None or not lo < hi:
        raise ConfigError(f"{K}.{key}: interval({lo}, {hi}) must have low < high")
    if log and lo <= 0:
        raise ConfigError(f"{K}.{key}: a log interval needs low > 0, got {lo}")
    if isinstance(lo, int) and isinstance(hi, int):
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(float(lo), float(hi), log=log)


def space(search: dict[str, str], taken: Sequence[str]) -> dict[str, BaseDistribution]:
    """The search space; a key that the ladder or a fixed override already sets is refused."""
    out: dict[str, BaseDistribution] = {}
    for key, text in search.items():
        if key in taken:
            raise ConfigError(f"{K}.{key}: {key} is also set on the command line or by the ladder; "
                              "search it or set it, not both")
        out[key] = distribution(key, str(text))
    return out


class RungView:
    """A study as seen by one rung's sampler and pruner: only that rung's search trials are listed."""

    def __init__(self, study: optuna.Study, ladder: str, rank: int, direction: Optional[str] = None) -> None:
        self._study, self._ladder, self._rank = study, ladder, rank
        self._direction = direction

    def _mine(self, trials: list) -> list:
        return [t for t in trials if t.user_attrs.get(keys.LADDER) == self._ladder
                and int(t.user_attrs.get(keys.RANK, -1)) == self._rank and t.user_attrs.get(keys.ROLE) == "search"]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self) -> list:
        return self.get_trials(deepcopy=False)

    @property
    def direction(self) -> StudyDirection:
        if self._direction is None:
            return self._study.direction
        return StudyDirection.MAXIMIZE if self._direction == "maximize" else StudyDirection.MINIMIZE

    @property
    def directions(self) -> list[StudyDirection]:
        return [self.direction]

    def __getattr__(self, name: str) -> Any:  # storage, study_name, _is_multi_objective, ...
        return getattr(self._study, name)


def sampler(kind: str, seed_text: str, budget: int) -> optuna.samplers.BaseSampler:
    """The rung's sampler, seeded from the rung's identity so that reruns propose the same values.
    TPE starts from random proposals for half the budget (at least two), then models the rest."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:4], "big")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, budget // 2))


def propose(study: optuna.Study, trial_id: int, view: RungView, dists: dict[str, BaseDistribution],
            kind: str, budget: int, warm: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Values for one new search trial of the rung ``view``: ``warm`` (the previous rank's best values,
    tried first) when given, else the sampler's; written to the trial as its params."""
    n = len(view.get_trials(deepcopy=False))
    smp = sampler(kind, f"{study.study_name}|{view._ladder}|{view._rank}|{n}", budget)
    frozen = study._storage.get_trial(trial_id)
    out: dict[str, Any] = {}
    for name, dist in dists.items():
        if warm is not None and name in warm and dist._contains(dist.to_internal_repr(warm[name])):
            value = warm[name]
        else:
            value = smp.sample_independent(view, frozen, name, dist)  # type: ignore[arg-type]
        study._storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
        out[name] = value
    return out
