"""The sweeper's typed config, registered as ``hydra/sweeper=ranksweep``.

Every field, its default and its check live in :class:`ranksweep.sweep.settings.SweepSettings`;
this class only adds Hydra's ``_target_``.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from ranksweep.sweep.settings import SweepSettings


@dataclass
class RanksweepSweeperConf(SweepSettings):
    _target_: str = "hydra_plugins.ranksweep_sweeper.ranksweep_sweeper.RanksweepSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="ranksweep", node=RanksweepSweeperConf,
                             provider="ranksweep")
# ranksweep's typed schema too, so that any Hydra app on ranksweep's conf/ composes (not only the CLI).
from ranksweep.config import register_configs  # noqa: E402

register_configs()
