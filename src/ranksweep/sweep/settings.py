"""Every ``hydra.sweeper.*`` value: defined, defaulted and validated here, and nowhere else.

Each field carries its default and its check (:func:`ranksweep.validation.checked`); checks that
relate two fields are in :meth:`SweepSettings.validate`. The Hydra plugin's config
(``hydra_plugins.ranksweep_sweeper.config``) is this dataclass plus Hydra's ``_target_``;
:class:`~ranksweep.sweep.sweeper.RankSweep` takes a validated instance.
This module imports nothing heavy: Hydra loads it at every start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from ranksweep.errors import ConfigError
from ranksweep.objectives import OBJECTIVES, direction_of
from ranksweep.urls import mask_secrets
from ranksweep.validation import (
    checked,
    did_you_mean,
    integer,
    is_int,
    not_empty,
    number,
    one_of,
    optional,
    positive_int,
    require,
    run_checks,
)

# The Optuna storage when none is given: the sweeper's, the subcommands' (--storage) and the report's.
DEFAULT_STORAGE_URL = "sqlite:///outputs/ranksweep.db"
PRUNERS = ("parent", "none")
STOP_RULES = ("margin", "share")
SAMPLERS = ("tpe", "random")
RUNG_PRUNERS = ("sha", "none")
PRESCREENS = ("none", "nested")
SWEEPER = K = "hydra.sweeper."
# hydra-optuna-sweeper's names and other ways to say ours (for did_you_mean).
ALIASES = {"n_trials": "search_budget", "search_space": "search", "min_rank": "start_rank",
           "seeds": "seeds_per_rank", "n_seeds": "seeds_per_rank", "metric": "objective",
           "threshold": "margin", "early_stopping_patience": "patience"}
share = number(at_least=0, below=1)
fraction = number(at_least=0, at_most=1)


@dataclass
class SweepSettings:
    """Rank doubling driven by Optuna. Every field is ``hydra.sweeper.<name>`` on the command line."""

    # The Optuna study: reuse the name to resume or to add workers.
    study_name: str = checked("ranksweep", not_empty)
    # Any Optuna storage URL; default: an SQLite file under outputs/ (relative to the working dir).
    storage: Optional[str] = DEFAULT_STORAGE_URL
    # The ladder: start_rank, start_rank*factor, ... up to max_rank.
    start_rank: int = checked(8, positive_int)
    factor: int = checked(2, integer(at_least=2))
    max_rank: int = 512  # >= start_rank: checked in validate()
    # margin (default): continue while a doubling's improvement is confidently (paired bootstrap over the
    # eval examples and the training noise) above `margin`; stop after `patience` doublings that are not (one
    # whose estimate is above it is not counted); recommend the smallest rank whose upper bound on (its
    # value - the best) is within the margin.
    # share (the seed's rule): a doubling must add min_gain of the total gain over the base; the
    # recommendation is the smallest rank within `tolerance` of that gain.
    stop_rule: str = checked("margin", one_of(*STOP_RULES))
    # relative: margin * |value| (0.005 = 0.5% of the objective); absolute: in the objective's units.
    margin: float = checked(0.005, number(at_least=0))
    margin_type: str = checked("relative", one_of("relative", "absolute"))
    confidence: float = checked(0.95, number(at_least=0.5, below=1))
    bootstrap: int = checked(2000, integer(at_least=100))
    patience: int = checked(2, positive_int)
    seeds_per_rank: int = checked(1, positive_int)
    # Extra seeds of the first rank's best values: the training noise they show (with every rank's further
    # seeds) widens every interval, so that another seed cannot undo a "confident" verdict. With
    # seeds_per_rank=1 at least one is needed.
    noise_seeds: int = checked(2, integer(at_least=0))
    # When the answer rests on intervals too wide to tell two ranks apart though the data lean towards the
    # larger (its lead's estimate is above the margin), train this many more seeds of both ranks' best values
    # and judge again, once per pair. 0: off (the smaller rank is recommended, saying the data cannot tell).
    resolve_seeds: int = checked(2, integer(at_least=0))
    # Rerun the recommended rank and the rank it beat (or the rank above the smallest) at this many times the
    # steps once the ladder stops, and say whether the verdict holds: a short run ranks learning speed, not
    # capacity. 0: off; else at least 1.5.
    budget_check: float = checked(3.0, number(at_least=0))
    # none: every rank of the ladder is trained, each with its search. nested: first ONE adapter is trained at
    # max_rank with nested ranks (each step uses its first b components, b drawn from the ladder's ranks) and
    # read at every prefix b on the eval examples; the stop rule on that curve names a candidate rank, and
    # only it, the rank below and the rank above are trained separately: the answer rests on those. Where
    # they contradict it, the ladder goes on as it would without the prescreen. docs/rank-method.md.
    prescreen: str = checked("none", one_of(*PRESCREENS))
    # The confirmations' search (prescreen=nested): this many trials per rank, the first at the values the
    # prescreen trained with, the others within a factor of 2 of them (a quarter of a linear range).
    confirm_budget: int = checked(1, positive_int)
    min_gain: float = checked(0.05, share)
    tolerance: float = checked(0.05, share)
    # Search per rank, the Hydra-Optuna way: {trainer.lr: "tag(log, interval(5e-5, 5e-3))",
    # lora.dropout: "choice(0.0, 0.05)"}. Each rank runs `search_budget` trials proposed by `sampler`;
    # `rung_pruner` stops losing values early; a rank's value is its best trial. Empty: one trial per
    # rank (and seed) at the configured values.
    search: Dict[str, str] = field(default_factory=dict)
    search_budget: int = checked(6, positive_int)
    sampler: str = checked("tpe", one_of(*SAMPLERS))
    rung_pruner: str = checked("sha", one_of(*RUNG_PRUNERS))  # sha: successive halving among the rank's trials
    # null: the objective's own (ranksweep.objectives: maximize for exact_match, minimize for the losses),
    # filled in when the settings are made. Older commands and configs give it: accepted when it agrees.
    direction: Optional[str] = checked(None, optional(one_of("minimize", "maximize")))
    objective: str = checked("eval_loss", one_of(*OBJECTIVES))
    # Abort when more than this share of finished trials failed (at least 2 failures).
    max_failure_rate: float = checked(0.5, fraction)
    # parent: prune when, after prune_after of its steps, a trial is behind its parent rank at the
    # same step by more than prune_margin of the parent's gain over the base; none: never prune.
    pruner: str = checked("parent", one_of(*PRUNERS))
    prune_after: float = checked(0.75, fraction)
    prune_margin: float = checked(0.1, number(at_least=0))
    # Jobs this worker keeps in flight (needs an out-of-process launcher: joblib, submitit).
    # Each job that ends frees its slot at once: no batch waits for its slowest trial.
    n_jobs: int = checked(1, positive_int)
    # Speculative doubling: free workers may run up to this many ranks of a ladder ahead of the
    # stop rule; ranks the rule makes unnecessary are cancelled (pruned, partial results kept).
    parallel: int = checked(4, positive_int)
    # Other axes, one ladder per combination, as sweep strings: {lora.targets: "attention,all_linear"}.
    # Command-line sweep overrides of the same key win.
    params: Dict[str, str] = field(default_factory=dict)
    # A trial whose worker stops beating for grace_period seconds is marked failed and run again.
    heartbeat_interval: int = checked(10, positive_int)
    grace_period: int = 30  # > heartbeat_interval: checked in validate()
    # How often to look again while another worker holds a trial this one needs.
    poll_s: float = checked(5.0, number(above=0))

    def __post_init__(self) -> None:
        if self.direction is None and self.objective in OBJECTIVES:
            self.direction = direction_of(self.objective)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SweepSettings:
        """Settings from the plugin's keyword arguments (Hydra's ``_target_`` and friends dropped)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in params if k not in names and not k.startswith("_"))
        if unknown:
            raise ConfigError(f"{K}{unknown[0]}: not a ranksweep sweeper setting{suggest(K + unknown[0])}")
        s = cls(**{k: v for k, v in params.items() if k in names})
        s.params = {str(k): str(v) for k, v in (s.params or {}).items()}
        s.search = {str(k): str(v) for k, v in (s.search or {}).items()}
        s.validate()
        return s

    def to_record(self) -> dict[str, Any]:
        """The settings as they are saved (the study's ``ranksweep_settings``, the ``sweep`` block of
        ``sweep_summary.json``, the W&B summary run's config): every field, plus ``ranks`` (the ladder they
        make), with secrets masked (the storage URL's password). :meth:`from_record` reads it back."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(storage=self.storage_url, search=dict(self.search or {}), params=dict(self.params or {}),
                   ranks=self.ranks)
        return mask_secrets(out)

    @classmethod
    def from_record(cls, record: Optional[dict[str, Any]], space: Optional[dict[str, Any]] = None) -> SweepSettings:
        """Settings read back from :meth:`to_record`'s record, or an older one: keys it does not know are
        ignored, missing ones defaulted. Older records held only the stop rule: ``space`` (the study's
        ``ranksweep_space``: start_rank, factor, seeds_per_rank, objective, search) fills in the rest, and
        a record with ``ranks`` but no ``start_rank``/``factor``/``max_rank`` gets them from those ranks.
        Not validated: a record is what a sweep ran with, read whatever the checks say today."""
        record = dict(record or {})
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in (space or {}).items() if k in names}
        values.update({k: v for k, v in record.items() if k in names})
        ranks = [int(r) for r in record.get("ranks") or [] if isinstance(r, (int, float))]
        if ranks:
            values.setdefault("start_rank", ranks[0])
            if len(ranks) > 1 and ranks[0] > 0:
                values.setdefault("factor", ranks[1] // ranks[0])
            values.setdefault("max_rank", ranks[-1])
        for name in ("noise_seeds", "budget_check", "resolve_seeds"):  # a sweep recorded before these ran without them
            values.setdefault(name, 0)
        values.setdefault("prescreen", "none")
        s = cls(**values)
        s.search = {str(k): str(v) for k, v in (s.search or {}).items()}
        s.params = {str(k): str(v) for k, v in (s.params or {}).items()}
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
        run_checks(self, K)
        require(is_int(self.max_rank) and self.max_rank >= self.start_rank,
                f"{K}max_rank must be >= {K}start_rank ({self.start_rank}), got {self.max_rank!r}")
        want = direction_of(self.objective)
        require(self.direction == want,
                f"{K}direction must be {want} for objective={self.objective}, got {self.direction}")
        require(self.seeds_per_rank >= 2 or self.noise_seeds >= 1,
                f"{K}noise_seeds must be >= 1 with {K}seeds_per_rank=1: without a second seed no interval covers "
                f"the training noise, so no verdict could be confident; got {self.noise_seeds!r}")
        require(self.prescreen == "none" or len(self.ranks) >= 3,
                f"{K}prescreen=nested needs a ladder of at least 3 ranks to place a knee in (start_rank "
                f"{self.start_rank} to max_rank {self.max_rank} gives {self.ranks})")
        require(self.budget_check == 0 or self.budget_check >= 1.5,
                f"{K}budget_check must be 0 (off) or at least 1.5 (times the steps), got {self.budget_check!r}")
        require(is_int(self.grace_period) and self.grace_period > self.heartbeat_interval,
                f"{K}grace_period must be an integer above heartbeat_interval ({self.heartbeat_interval}), "
                f"got {self.grace_period!r}")


def suggest(key: str) -> str:
    """`` (did you mean hydra.sweeper.max_rank?)`` for an unknown ``hydra.sweeper.*`` key, else ''."""
    return did_you_mean(key, [f.name for f in fields(SweepSettings)], ALIASES, prefix=K)
