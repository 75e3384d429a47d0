"""Every ``hydra.sweeper.*`` value: defined, defaulted and validated here, and nowhere else.

The Hydra plugin's config (``hydra_plugins.ranksweep_sweeper.config``) is this dataclass plus
Hydra's ``_target_``; :class:`~ranksweep.sweep.sweeper.RankSweep` takes a validated instance.
This module imports nothing heavy: Hydra loads it at every start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from ranksweep.errors import ConfigError

DEFAULT_STORAGE_URL = "sqlite:///outputs/ranksweep.db"
OBJECTIVES = {"eval_loss": "minimize", "perplexity": "minimize", "exact_match": "maximize"}
PRUNERS = ("parent", "none")
STOP_RULES = ("margin", "share")
SAMPLERS = ("tpe", "random")
RUNG_PRUNERS = ("sha", "none")
K = "hydra.sweeper."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(K + message)


def _positive_int(name: str, value: Any) -> None:
    _require(_is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")


def _share(name: str, value: Any, upper_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        0 <= value < 1 if upper_open else 0 <= value <= 1)
    _require(ok, f"{name} must be in [0, {'1)' if upper_open else '1]'}, got {value!r}")


@dataclass
class SweepSettings:
    """Rank doubling driven by Optuna. Every field is ``hydra.sweeper.<name>`` on the command line."""

    # The Optuna study: reuse the name to resume or to add workers.
    study_name: str = "ranksweep"
    # Any Optuna storage URL; default: an SQLite file under outputs/ (relative to the working dir).
    storage: Optional[str] = DEFAULT_STORAGE_URL
    # The ladder: start_rank, start_rank*factor, ... up to max_rank.
    start_rank: int = 8
    factor: int = 2
    max_rank: int = 512
    # margin (default): continue while a doubling's improvement is confidently (paired bootstrap over
    # the eval examples) above `margin`; stop after `patience` doublings that are not; recommend the
    # smallest rank whose upper bound on (its value - the best) is within the margin.
    # share (the seed's rule): a doubling must add min_gain of the total gain over the base; the
    # recommendation is the smallest rank within `tolerance` of that gain.
    stop_rule: str = "margin"
    # relative: margin * |value| (0.005 = 0.5% of the objective); absolute: in the objective's units.
    margin: float = 0.005
    margin_type: str = "relative"
    confidence: float = 0.95
    bootstrap: int = 2000
    patience: int = 2
    seeds_per_rank: int = 1
    min_gain: float = 0.05
    tolerance: float = 0.05
    # Search per rank, the Hydra-Optuna way: {trainer.lr: "tag(log, interval(5e-5, 5e-3))",
    # lora.dropout: "choice(0.0, 0.05)"}. Each rank runs `search_budget` trials proposed by `sampler`;
    # `rung_pruner` stops losing values early; a rank's value is its best trial. Empty: one trial per
    # rank (and seed) at the configured values.
    search: Dict[str, str] = field(default_factory=dict)
    search_budget: int = 6
    sampler: str = "tpe"  # tpe | random
    rung_pruner: str = "sha"  # sha (successive halving among the rank's trials) | none
    direction: str = "minimize"
    objective: str = "eval_loss"
    # Abort when more than this share of finished trials failed (at least 2 failures).
    max_failure_rate: float = 0.5
    # parent: prune when, after prune_after of its steps, a trial is behind its parent rank at the
    # same step by more than prune_margin of the parent's gain over the base; none: never prune.
    pruner: str = "parent"
    prune_after: float = 0.75
    prune_margin: float = 0.1
    # Jobs this worker keeps in flight (needs an out-of-process launcher: joblib, submitit).
    # Each job that ends frees its slot at once: no batch waits for its slowest trial.
    n_jobs: int = 1
    # Speculative doubling: free workers may run up to this many ranks of a ladder ahead of the
    # stop rule; ranks the rule makes unnecessary are cancelled (pruned, partial results kept).
    parallel: int = 4
    # Other axes, one ladder per combination, as sweep strings: {lora.targets: "attention,all_linear"}.
    # Command-line sweep overrides of the same key win.
    params: Dict[str, str] = field(default_factory=dict)
    # A trial whose worker stops beating for grace_period seconds is marked failed and run again.
    heartbeat_interval: int = 10
    grace_period: int = 30
    # How often to look again while another worker holds a trial this one needs.
    poll_s: float = 5.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SweepSettings:
        """Settings from the plugin's keyword arguments (Hydra's ``_target_`` and friends dropped)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in params if k not in names and not k.startswith("_"))
        if unknown:
            raise ConfigError(f"{K}{unknown[0]}: not a ranksweep sweeper setting")
        s = cls(**{k: v for k, v in params.items() if k in names})
        s.params = {str(k): str(v) for k, v in (s.params or {}).items()}
        s.search = {str(k): str(v) for k, v in (s.search or {}).items()}
        s.validate()
        return s

    @property
    def ranks(self) -> list[int]:
        """``start_rank * factor**k`` up to and including ``max_rank``."""
        from ranksweep.sweep.ladder import rank_ladder

        return rank_ladder(self.start_rank, self.factor, self.max_rank)

    @property
    def budget(self) -> int:
        """Trials per rank (at seed 0): the search budget when searching, else one."""
        return self.search_budget if self.search else 1

    @property
    def storage_url(self) -> str:
        return str(self.storage or DEFAULT_STORAGE_URL)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming ``hydra.sweeper.<key>`` for the first bad value."""
        _require(bool(self.study_name) and bool(str(self.study_name).strip()), "study_name must not be empty")
        _require(_is_int(self.start_rank) and self.start_rank > 0,
                 f"start_rank must be a positive integer, got {self.start_rank!r}")
        _require(_is_int(self.factor) and self.factor >= 2, f"factor must be an integer >= 2, got {self.factor!r}")
        _require(_is_int(self.max_rank) and self.max_rank >= self.start_rank,
                 f"max_rank must be >= hydra.sweeper.start_rank ({self.start_rank}), got {self.max_rank!r}")
        _require(self.stop_rule in STOP_RULES, f"stop_rule must be margin or share, got {self.stop_rule!r}")
        _require(isinstance(self.margin, (int, float)) and not isinstance(self.margin, bool)
                 and math.isfinite(self.margin) and self.margin >= 0,
                 f"margin must be a finite number >= 0, got {self.margin!r}")
        _require(self.margin_type in ("relative", "absolute"),
                 f"margin_type must be relative or absolute, got {self.margin_type!r}")
        _require(isinstance(self.confidence, float) and 0.5 <= self.confidence < 1,
                 f"confidence must be in [0.5, 1), got {self.confidence!r}")
        _require(_is_int(self.bootstrap) and self.bootstrap >= 100,
                 f"bootstrap must be an integer >= 100, got {self.bootstrap!r}")
        _positive_int("search_budget", self.search_budget)
        _require(self.sampler in SAMPLERS, f"sampler must be tpe or random, got {self.sampler!r}")
        _require(self.rung_pruner in RUNG_PRUNERS,
                 f"rung_pruner must be sha or none, got {self.rung_pruner!r}")
        _share("min_gain", self.min_gain)
        _positive_int("patience", self.patience)
        _positive_int("seeds_per_rank", self.seeds_per_rank)
        _share("tolerance", self.tolerance)
        _require(self.objective in OBJECTIVES,
                 f"objective must be eval_loss, perplexity or exact_match, got {self.objective!r}")
        _require(self.direction in ("minimize", "maximize"),
                 f"direction must be minimize or maximize, got {self.direction!r}")
        want = OBJECTIVES[self.objective]
        _require(self.direction == want,
                 f"direction must be {want} for objective={self.objective}, got {self.direction}")
        _share("max_failure_rate", self.max_failure_rate, upper_open=False)
        _require(self.pruner in PRUNERS, f"pruner must be parent or none, got {self.pruner!r}")
        _share("prune_after", self.prune_after, upper_open=False)
        _require(isinstance(self.prune_margin, (int, float)) and math.isfinite(self.prune_margin)
                 and self.prune_margin >= 0, f"prune_margin must be a number >= 0, got {self.prune_margin!r}")
        _positive_int("n_jobs", self.n_jobs)
        _positive_int("parallel", self.parallel)
        _positive_int("heartbeat_interval", self.heartbeat_interval)
        _require(_is_int(self.grace_period) and self.grace_period > self.heartbeat_interval,
                 f"grace_period must be an integer above heartbeat_interval ({self.heartbeat_interval}), "
                 f"got {self.grace_period!r}")
        _require(isinstance(self.poll_s, (int, float)) and math.isfinite(self.poll_s) and self.poll_s > 0,
                 f"poll_s must be a positive number, got {self.poll_s!r}")
