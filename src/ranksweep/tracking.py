"""Weights & Biases: one run per trial, offline unless the user asks for online.

The run's config is the resolved config with secrets masked, plus the
comparison keys (r, alpha, targets, bits, family...) flattened to the top
level so that W&B's parallel-coordinates and scatter panels can use them.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ranksweep.config import LoggerConfig, RunConfig
from ranksweep.urls import mask_secrets


def run_label(run: RunConfig) -> str:
    """A short trial name such as ``r16-a32-all_linear-nf4``; ``base-all_linear-nf4`` for a base evaluation."""
    if run.trainer.max_steps == 0:
        return f"base-{run.lora.targets.replace('+', '_')}-{run.quant.name}"
    alpha = run.lora.lora_alpha
    a = int(alpha) if float(alpha).is_integer() else round(alpha, 2)
    return f"r{run.lora.r}-a{a}-{run.lora.targets.replace('+', '_')}-{run.quant.name}"


def flat_keys(run: RunConfig) -> dict[str, Any]:
    """The keys people compare runs by, at the top level of the W&B config.

    None of them may share a name with a top-level key of the resolved config
    (model, quant, ...), which is merged into the same W&B config.
    """
    return {
        "r": run.lora.r,
        "alpha": run.lora.lora_alpha,
        "alpha_rule": run.lora.alpha_rule,
        "targets": run.lora.targets,
        "bits": run.quant.bits,
        "quant_name": run.quant.name,
        "family": run.model.family,
        "model_name": run.model.name,
        "variant": run.model.variant,
        "dataset": run.data.name,
        "seed": run.trainer.seed,
        "max_steps": run.trainer.max_steps,
        "lr": run.trainer.lr,
        "role": "base" if run.trainer.max_steps == 0 else "rung",
        "trial_number": run.trial.trial_number,
        "study": run.trial.study_name,
    }


class Tracker:
    """A thin wrapper so that trials run the same with logger=none."""

    def __init__(self, cfg: LoggerConfig, run: RunConfig, resolved: dict, out_dir: str) -> None:
        self.run = None
        self.cfg = cfg
        if not cfg.enabled or cfg.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        config = dict(flat_keys(run))
        config.update(mask_secrets({k: v for k, v in resolved.items() if k != "hydra"}))
        rank_tag = "base" if run.trainer.max_steps == 0 else f"r{run.lora.r}"
        tags = list(cfg.tags) + [rank_tag, run.lora.targets, run.quant.name, run.model.family]
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            dir=cfg.dir or out_dir,
            name=cfg.run_name or run_label(run),
            group=cfg.group,
            tags=sorted(set(tags)),
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def run_dir(self) -> Optional[str]:
        return os.path.dirname(self.run.dir) if self.run is not None else None

    @property
    def run_path(self) -> Optional[str]:
        if self.run is None:
            return None
        return self.run.path if self.cfg.mode == "online" else self.run_dir

    def log(self, data: dict[str, Any], step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in data.items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def log_sweep_summary(logger: Any, ladders: list, settings: Any, sweep_dir: Any, plot_path: Any) -> Optional[str]:
    """One W&B run per sweep with the rank curve (table + line plot + PNG) and the recommendation;
    returns its run folder (None with logger=none). ``ladders`` are :class:`ranksweep.sweep.results.Ladder`."""
    if not logger.get("enabled", False) or logger.get("mode") == "disabled":
        return None
    import math

    import wandb

    s = settings
    rows = [[lad.key, r.rank, math.log2(r.rank), r.mean, r.std or 0.0, r.trainable_params or 0, r.state]
            for lad in ladders for r in lad.curve if r.mean is not None]
    run = wandb.init(project=logger.get("project", "ranksweep"), entity=logger.get("entity"), mode=logger.get("mode"),
                     dir=str(sweep_dir), group=s.study_name, name=f"{s.study_name}-summary", job_type="sweep-summary",
                     tags=["sweep-summary"], reinit="finish_previous",
                     config={"study_name": s.study_name, "objective": s.objective, "ranks": s.ranks,
                             "min_gain": s.min_gain, "patience": s.patience, "ladders": [lad.key for lad in ladders]},
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    table = wandb.Table(columns=["ladder", "rank", "log2_rank", s.objective, "std", "trainable_params", "state"],
                        data=rows)
    run.log({"rank_curve": table,
             "rank_curve_plot": wandb.plot.line(table, "log2_rank", s.objective, stroke="ladder",
                                                title=f"{s.objective} vs log2(rank)"),
             "rank_curve_png": wandb.Image(str(plot_path))})
    for lad in ladders:
        rec = lad.recommendation
        prefix = "" if len(ladders) == 1 else f"{lad.key}/"
        run.summary[f"{prefix}recommended_rank"] = rec.rank if rec else None
        run.summary[f"{prefix}recommendation"] = rec.why if rec else None
        run.summary[f"{prefix}stop_reason"] = lad.stop_reason
    out = str(os.path.dirname(run.dir))
    run.finish()
    return out
