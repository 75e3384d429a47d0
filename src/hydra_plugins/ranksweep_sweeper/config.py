"""The sweeper's typed config, registered as ``hydra/sweeper=ranksweep``."""


from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RanksweepSweeperConf:
    """Rank doubling driven by Optuna. Every field is ``hydra.sweeper.<name>`` on the command line."""

    _target_: str = "hydra_plugins.ranksweep_sweeper.ranksweep_sweeper.RanksweepSweeper"
    # The Optuna study: reuse the name to resume or to add workers.
    study_name: str = "ranksweep"
    # Any Optuna storage URL; default: an SQLite file under outputs/.
    storage: Optional[str] = "sqlite:///outputs/ranksweep.db"
    # The ladder: start_rank, start_rank*factor, ... up to max_rank.
    start_rank: int = 8
    factor: int = 2
    max_rank: int = 512
    # Stop when a doubling buys less than min_gain of the total gain won so far,
    # for `patience` doublings in a row (or stays within seed noise).
    min_gain: float = 0.05
    patience: int = 2
    seeds_per_rank: int = 1
    # The recommended rank is the smallest within `tolerance` (a share of the total
    # gain over the base) of the best.
    tolerance: float = 0.05
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
    # Speculative doubling: free workers may run up to this many ranks of a ladder ahead of
    # the stop rule; ranks the rule makes unnecessary are cancelled (pruned, partial results kept).
    parallel: int = 4
    # Other axes, one ladder per combination, as sweep strings: {lora.targets: "attention,all_linear"}.
    # Command-line sweep overrides of the same key win.
    params: Dict[str, str] = field(default_factory=dict)
    # RDB storages: a trial whose worker stops beating for grace_period seconds is retried.
    heartbeat_interval: int = 10
    grace_period: int = 30
    # How often to look again while another worker holds a trial this one needs.
    poll_s: float = 5.0


ConfigStore.instance().store(group="hydra/sweeper", name="ranksweep", node=RanksweepSweeperConf,
                             provider="ranksweep")
