"""One QLoRA trial: quantized base, fresh LoRA adapter, Trainer, evaluation, artefacts.

:func:`run_trial` runs a validated :class:`~ranksweep.config.RunConfig` (or a composed config);
the ``ranksweep`` command and the sweeper both call it. It writes into ``out_dir``:

- ``adapter/``: the LoRA adapter in PEFT format (safetensors);
- ``config.yaml``: the resolved config;
- ``metrics.json``: eval metrics, trainable params, peak memory, tokens/s, wall time;
- ``wandb/``: the offline W&B run (when ``logger=wandb``).

- :mod:`ranksweep.trial.recipe`: :class:`TrialRecipe`, the trial's steps, and :func:`run_trial`;
- :mod:`ranksweep.trial.adapter`: k-bit preparation, checkpointing, LoRA, compilation;
- :mod:`ranksweep.trial.trainer`: the Trainer subclass, its arguments and the logging/pruning callback;
- :mod:`ranksweep.trial.evaluate`: token accuracy, exact match of generations, the objective.
"""

from __future__ import annotations

from ranksweep.trial.evaluate import generate_exact_match, objective_value, token_accuracy
from ranksweep.trial.recipe import Reporter, TrialRecipe, TrialResult, peak_memory_gb, resolved_config, run_trial

__all__ = [
    "Reporter",
    "TrialRecipe",
    "TrialResult",
    "generate_exact_match",
    "objective_value",
    "peak_memory_gb",
    "resolved_config",
    "run_trial",
    "token_accuracy",
]
