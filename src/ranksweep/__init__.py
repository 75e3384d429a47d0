"""ranksweep: find the LoRA rank worth paying for.

The public API, re-exported from the modules that define it (imported lazily, so that
``import ranksweep`` does not pull in torch):

- :func:`run_trial`, :class:`TrialResult`: one QLoRA trial from a composed config;
- :class:`RunConfig`, :func:`to_run_config`: the validated config;
- :class:`SweepSettings`: every ``hydra.sweeper.*`` setting;
- :class:`Ladder`, :class:`Rung`, :class:`Trial`, :func:`read_study`: a sweep's results, read from its study;
- :class:`StopRule` (the protocol), :class:`MarginRule` (the default), :class:`ShareRule`, :class:`Step`,
  :func:`decide`, :func:`rank_ladder`: when a ladder stops and which rank it recommends;
- :func:`estimate`: a trial's peak memory before launching;
- :class:`RanksweepError`, :class:`ConfigError`, :class:`DataError`: one-line user errors.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_trial": "ranksweep.trial",
    "TrialResult": "ranksweep.trial",
    "RunConfig": "ranksweep.config",
    "to_run_config": "ranksweep.config",
    "StopRule": "ranksweep.sweep.rules",
    "MarginRule": "ranksweep.sweep.rules.margin",
    "ShareRule": "ranksweep.sweep.rules.share",
    "Step": "ranksweep.sweep.rules",
    "decide": "ranksweep.sweep.rules",
    "rank_ladder": "ranksweep.sweep.ladder",
    "estimate": "ranksweep.memory",
    "SweepSettings": "ranksweep.sweep.settings",
    "Ladder": "ranksweep.sweep.results",
    "Rung": "ranksweep.sweep.results",
    "Trial": "ranksweep.sweep.results",
    "read_study": "ranksweep.sweep.reader",
    "RanksweepError": "ranksweep.errors",
    "ConfigError": "ranksweep.errors",
    "DataError": "ranksweep.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ranksweep' has no attribute {name!r}")
