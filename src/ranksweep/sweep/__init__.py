"""The rank sweep: settings, the model of a sweep's results, planning, claiming and the loop.

Importing this package is cheap (Hydra imports the sweeper plugin, which imports
:mod:`ranksweep.sweep.settings`, at every start); Optuna is imported by the modules that need it.

- :mod:`.settings`: every ``hydra.sweeper.*`` value, defaulted and validated in one dataclass;
- :mod:`.ladder`: which ranks a ladder tries;
- :mod:`.rules`: the stop rule, when a ladder stops and which rank it recommends (the default:
  :class:`~.rules.margin.MarginRule`; also :class:`~.rules.share.ShareRule`);
- :mod:`.results`: :class:`~.results.Trial`, :class:`~.results.Rung`, :class:`~.results.Ladder` and each
  rung's table row; :mod:`.reader` builds them from an Optuna study, :mod:`.conclude` adds what the rule
  concludes;
- :mod:`.plan`: what to run next; :mod:`.claim`: creating trials under the study lock;
- :mod:`.heartbeat`, :mod:`.progress`, :mod:`.record`: a running job's liveness, the progress line,
  recording a finished job;
- :mod:`.sweeper`: :class:`~.sweeper.RankSweep`, the loop behind ``hydra/sweeper=ranksweep``;
- :mod:`.summary`: ``sweep_summary.json`` and the text table.
"""
