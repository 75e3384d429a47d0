"""From the command line to jobs: which overrides are fixed, which are axes, and what each job gets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ranksweep.errors import ConfigError
from ranksweep.sweep.plan import Item
from ranksweep.sweep.settings import SweepSettings

# Overrides the sweeper owns: a user setting them would fight the ladder.
OWNED = ("lora.r", "trial.storage", "trial.study_name", "trial.trial_number", "trial.parent_trial_number")


def quote(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class SweepSpace:
    """The fixed overrides, one ladder ``(key, combo)`` per combination of the axes, and the keys given
    a range to search at every rank (``trainer.lr='tag(log, interval(1e-4, 1e-2))'``)."""

    fixed: tuple[str, ...]
    axes: tuple[tuple[str, tuple[str, ...]], ...]  # (key, ("key=v1", "key=v2", ...))
    search: tuple[tuple[str, str], ...] = ()  # (key, sweep string), as in hydra.sweeper.search

    @property
    def ladders(self) -> list[tuple[str, tuple[str, ...]]]:
        combos = list(itertools.product(*[vals for _, vals in self.axes])) if self.axes else [()]
        return [(" ".join(combo) or "default", tuple(combo)) for combo in combos]

    def stored(self, s: SweepSettings) -> dict:
        """What the study remembers of its space: a rerun must match it to resume."""
        out = {"ladders": sorted(k for k, _ in self.ladders), "fixed": sorted(self.fixed),
               "start_rank": s.start_rank, "factor": s.factor, "seeds_per_rank": s.seeds_per_rank,
               "objective": s.objective}
        if s.search:  # absent without a search, so that studies made before it still resume
            out.update(search=dict(sorted(s.search.items())), search_budget=s.search_budget)
        return out

    @property
    def seed_base(self) -> int:
        """``trainer.seed=K`` on the command line moves every job's seed by K (seeds K, K+1, ...)."""
        for o in self.fixed:
            key, _, value = o.partition("=")
            if key.lstrip("+~") == "trainer.seed":
                try:
                    return int(value)
                except ValueError:
                    return 0  # not an integer: the job's config check names it
        return 0

    @property
    def keys(self) -> list[str]:
        """Every config key the command line sets (fixed or swept)."""
        return [o.split("=", 1)[0].lstrip("+~") for o in self.fixed] + [k.lstrip("+~") for k, _ in self.axes]


def parse(arguments: Sequence[str], preset: dict[str, str]) -> SweepSpace:
    """Split the command line (plus ``hydra.sweeper.params``, which the command line overrides).

    A list (``a,b``, ``choice(a,b)``, ``range(...)``) is an axis: one ladder per value. An interval is
    searched within every rank, as hydra-optuna-sweeper searches one given on the command line; it
    joins ``hydra.sweeper.search`` (and wins over the same key there)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given = {o.get_key_element().lstrip("+~") for o in parser.parse_overrides(list(arguments))}
    extra = [f"{k}={v}" for k, v in preset.items() if k not in given]
    fixed: list[str] = []
    axes: list[tuple[str, tuple[str, ...]]] = []
    search: dict[str, str] = {}
    for o in parser.parse_overrides(extra + list(arguments)):
        key = o.get_key_element()
        if key.lstrip("+~") in OWNED:
            raise ConfigError(f"{key.lstrip('+~')} is set by the rank ladder; use hydra.sweeper.start_rank, "
                              "factor and max_rank instead")
        if o.is_sweep_override():
            if o.is_interval_sweep():
                search[key.lstrip("+~")] = o.input_line.split("=", 1)[1]
                continue
            axes.append((key, tuple(f"{key}={v}" for v in o.sweep_string_iterator())))
        else:
            fixed.append(o.input_line)
    return SweepSpace(tuple(fixed), tuple(axes), tuple(search.items()))


def _value(v: object) -> str:
    return repr(v) if isinstance(v, float) else quote(v) if isinstance(v, str) else str(v)


def checkpoint_dir(sweep_dir: object, item: Item) -> str:
    """The job's checkpoint folder: the same for every attempt at the job, so that an attempt run again
    after its worker died resumes the last one's checkpoints (``trainer.save_every``)."""
    import hashlib

    ladder = hashlib.sha1(item.ladder.encode()).hexdigest()[:8]
    return f"{sweep_dir}/checkpoints/{ladder}-r{item.rank}-s{item.seed}-t{item.slot}"


def job_overrides(space: SweepSpace, s: SweepSettings, item: Item, number: int, subdir: str,
                  parent: int | None = None, values: dict | None = None, checkpoints: str | None = None,
                  data_digest: str | None = None) -> list[str]:
    """The overrides of one job: the ladder's, its rank and seed, its searched values, and the handle
    on its Optuna trial (with ``data_digest``, what its data must hold: the study's)."""
    ov = list(space.fixed) + list(item.combo) + [f"{k}={_value(v)}" for k, v in (values or {}).items()]
    if item.overrides:  # what this job trains differently (a budget check's steps) replaces the ladder's
        own = {o.split("=", 1)[0].lstrip("+~") for o in item.overrides}
        ov = [o for o in ov if o.split("=", 1)[0].lstrip("+~") not in own] + list(item.overrides)
    ov += [
        f"lora.r={item.rank if item.rank > 0 else s.start_rank}",
        f"trainer.seed={space.seed_base + item.seed}",
        f"objective={s.objective}",
        f"trial.storage={quote(s.storage_url)}",
        f"trial.study_name={quote(s.study_name)}",
        f"trial.trial_number={number}",
        f"trial.prune_after={s.prune_after}",
        f"trial.prune_margin={s.prune_margin}",
        f"trial.pruner={'none' if item.slot < 0 else s.pruner}",  # a budget check, a prescreen: never pruned
        f"trial.role={item.role}",
        f"trial.rung_pruner={s.rung_pruner if item.search else 'none'}",
        f"logger.group={quote(s.study_name)}",
        f"hydra.sweep.subdir={quote(subdir)}",
    ]
    if parent is not None:
        ov.append(f"trial.parent_trial_number={parent}")
    if checkpoints is not None and item.rank > 0:
        ov.append(f"trial.checkpoint_dir={quote(checkpoints)}")
    if data_digest is not None:
        ov.append(f"trial.data_digest={quote(data_digest)}")
    if item.rank == 0:  # the base: an untrained adapter (LoRA B = 0) is the base model
        ov.append("trainer.max_steps=0")
        if s.objective != "exact_match":
            ov.append("data.metric_examples=0")
    return ov
