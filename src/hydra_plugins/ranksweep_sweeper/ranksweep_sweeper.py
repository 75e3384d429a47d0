"""The Sweeper class Hydra instantiates; the work lives in :mod:`ranksweep.sweep.sweeper`."""


from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import RanksweepSweeperConf  # noqa: F401  (registers the config)


class RanksweepSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self._impl: Optional[Any] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ranksweep.sweep.settings import SweepSettings
        from ranksweep.sweep.sweeper import RankSweep  # lazy: optuna, numpy, matplotlib

        self._impl = RankSweep(SweepSettings.from_params(self.params))
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        assert self._impl is not None
        return self._impl.sweep(arguments)
