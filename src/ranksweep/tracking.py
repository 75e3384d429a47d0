"""Weights & Biases: one run per trial, offline unless the user asks for online.

The run's config is the resolved config with secrets masked, plus the
comparison keys (r, alpha, targets, bits, family...) flattened to the top
level so that W&B's parallel-coordinates and scatter panels can use them.
W&B records the command line in a run's metadata: runs start with a masked copy of it
(:func:`ranksweep.urls.masked_argv`), so no password or token reaches the run's files.

W&B's own variables are honoured: ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE`` and
``WANDB_DIR`` fill what the config leaves null; an explicit ``logger.*`` value wins over them
(:meth:`ranksweep.config.LoggerConfig.effective`, applied when a run starts).

Every trained trial's adapter is a ``model`` artifact of its run (:meth:`Tracker.log_adapter`),
named after the study and what tells ladders apart (model, targets, quant) and aliased ``r16``
and ``trial-N``; the sweep's summary run logs each ladder's recommended adapter again under the
same name with the alias ``best`` (same files, so W&B keeps one version and adds the alias).
Files are referenced in place (``policy="immutable"``): offline, the artifact record lives in
the run's ``.wandb`` log and points at the trial's ``adapter/`` folder, which ``wandb sync``
uploads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from ranksweep.config import LoggerConfig, RunConfig
from ranksweep.errors import ConfigError, RanksweepError
from ranksweep.urls import mask_secrets, masked_argv


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


def logger_config(logger: Any) -> LoggerConfig:
    """The effective :class:`LoggerConfig` (WANDB_* variables filling what it leaves null) of a config, node
    or mapping."""
    if isinstance(logger, LoggerConfig):
        return logger.effective()
    names = LoggerConfig.__dataclass_fields__
    values = {k: logger.get(k) for k in names if logger is not None and logger.get(k) is not None}
    if "tags" in values:
        values["tags"] = [str(t) for t in values["tags"]]
    return LoggerConfig(**values).effective()


def init_args(cfg: LoggerConfig, out_dir: Any) -> dict[str, Any]:
    """``wandb.init``'s project, entity, mode and dir from an effective config; the run's folder when neither
    the config nor WANDB_DIR gives a dir."""
    return {"project": cfg.project or "ranksweep", "entity": cfg.entity, "mode": cfg.mode,
            "dir": str(cfg.dir or out_dir)}


def _enabled(cfg: LoggerConfig) -> bool:
    return bool(cfg.enabled) and cfg.mode != "disabled"


def artifact_name(study: Optional[str], model: Any, targets: Any, quant: Any) -> str:
    """The adapter artifact's name: one per study and (model, targets, quant), so that a ladder's ranks are
    versions of one artifact (W&B allows letters, digits, ``-``, ``_`` and ``.``; 128 characters)."""
    raw = "-".join(str(x) for x in (study or "ranksweep", model, targets, quant) if x not in (None, ""))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:128]


def adapter_aliases(run: RunConfig) -> list[str]:
    """``r16`` (``r16-s1`` for a further seed, ``r16-longer`` for the budget check's longer run, ``r16-nested`` for
    a nested-rank prescreen) and, in a sweep, ``trial-N``."""
    out = [f"r{run.lora.r}" + ("-longer" if run.trial.role == "budget" else "-nested" if run.trial.role == "prescreen"
                               else f"-s{run.trainer.seed}" if run.trainer.seed else "")]
    if run.trial.trial_number is not None:
        out.append(f"trial-{run.trial.trial_number}")
    return out


def adapter_artifact(name: str, path: Any, metadata: dict[str, Any]) -> Any:
    """A ``model`` artifact of the PEFT adapter folder ``path``, its files referenced in place."""
    import wandb

    art = wandb.Artifact(name, type="model", metadata=metadata,
                         description="LoRA adapter (PEFT format) trained by ranksweep")
    art.add_dir(str(path), policy="immutable")
    return art


@contextlib.contextmanager
def _init_errors(cfg: LoggerConfig) -> Iterator[None]:
    """W&B refusing to start (online without an API key, no route to its server) as one line that says
    how to run without it; raised before training, so nothing is lost."""
    import wandb

    try:
        yield
    except wandb.errors.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = "logger.mode" if os.environ.get("WANDB_MODE") != cfg.mode else "WANDB_MODE"
        hint = "log locally with WANDB_MODE=offline (or logger.mode=offline), or not at all with logger=none"
        err = ConfigError if isinstance(exc, wandb.errors.UsageError) else RanksweepError
        raise err(f"{where}={cfg.mode}: W&B cannot start a run ({type(exc).__name__}: {first}); {hint}") from None


class Tracker:
    """A thin wrapper so that trials run the same with logger=none."""

    def __init__(self, cfg: LoggerConfig, run: RunConfig, resolved: dict, out_dir: str) -> None:
        self.run = None
        self.cfg = cfg = logger_config(cfg)
        self.spec = run
        self.out_dir = Path(out_dir)
        self.adapter_logged = False
        if not _enabled(cfg):
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        config = dict(flat_keys(run))
        config.update(mask_secrets({k: v for k, v in resolved.items() if k != "hydra"}))
        rank_tag = "base" if run.trainer.max_steps == 0 else f"r{run.lora.r}"
        tags = list(cfg.tags) + [rank_tag, run.lora.targets, run.quant.name, run.model.family]
        with masked_argv(), _init_errors(cfg):  # W&B keeps the command line (metadata "args"): a masked copy
            self.run = wandb.init(
                **init_args(cfg, out_dir),
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

    def log_adapter(self, path: str | os.PathLike[str], aliases: Optional[list[str]] = None,
                    metadata: Optional[dict[str, Any]] = None) -> Optional[str]:
        """Log the trained adapter folder ``path`` as a ``model`` artifact of this run, with ``aliases``
        (default: ``r16``, ``trial-N``); returns the artifact's name. Nothing for a base evaluation
        (its adapter is untrained) or with logger=none."""
        run = self.spec
        if self.run is None or run.trainer.max_steps == 0 or not Path(path).is_dir():
            return None
        name = artifact_name(run.trial.study_name, run.model.name, run.lora.targets, run.quant.name)
        meta = {k: v for k, v in flat_keys(run).items() if v is not None}
        meta["base_model"] = str(run.model.id)
        meta.update(metadata or {})
        self.run.log_artifact(adapter_artifact(name, path, mask_secrets(meta)),
                              aliases=list(aliases or adapter_aliases(run)))
        self.adapter_logged = True
        return name

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run; a trial that saved its adapter and metrics (``adapter/``, ``metrics.json`` in its
        folder) and did not log the adapter yet logs it here."""
        if self.run is not None:
            out = self.out_dir
            if exit_code == 0 and not self.adapter_logged and (out / "metrics.json").is_file():
                try:
                    self.log_adapter(out / "adapter")
                except Exception as exc:  # noqa: BLE001 - the run's metrics matter more than the artifact
                    import logging

                    logging.getLogger("ranksweep").warning("adapter not logged to W&B: %s", exc)
            self.run.finish(exit_code=exit_code)
            self.run = None


def _log_best_adapters(run: Any, ladders: list, study_name: str, sweep_dir: Path) -> None:
    """Each ladder's recommended adapter under its trials' artifact name, aliased ``best`` and ``r16``
    (``best-<ladder>`` too when there are several ladders)."""
    from ranksweep.export import best_trial, ladder_slug, read_trial_files, sweep_resolver

    resolve = sweep_resolver(sweep_dir)
    taken: set[str] = set()
    for lad in ladders:
        t = best_trial(lad)
        folder = resolve(t.output_dir) if t is not None else None
        if t is None or folder is None or not (folder / "adapter").is_dir():
            continue
        cfg, metrics = read_trial_files(folder)
        model, lora, quant = cfg.get("model") or {}, cfg.get("lora") or {}, cfg.get("quant") or {}
        name = artifact_name(study_name, model.get("name"), lora.get("targets"), quant.get("name"))
        aliases = [] if name in taken else ["best"]
        taken.add(name)
        if len(ladders) > 1:
            aliases.append(f"best-{ladder_slug(lad.key)}")
        meta = {"ladder": lad.key, "rank": t.rank, "trial_number": t.number, lad.objective: t.objective,
                "recommendation": lad.recommendation.why if lad.recommendation else None}
        run.log_artifact(adapter_artifact(name, folder / "adapter", mask_secrets(meta)),
                         aliases=aliases + [f"r{t.rank}"])


def prescreen_rows(ladders: list) -> list[list]:
    """``[ladder, rank, log2_rank, prefix_value, separate_value, gap, candidate, confirm]`` per prefix of each
    ladder's nested prescreen that has a value (:func:`ranksweep.plot.prefix_points`: the same rows as the HTML
    report's prescreen table); ``separate_value`` and ``gap`` are None where the rank was not trained on its own."""
    import math

    from ranksweep.plot import prefix_points

    return [[lad.key, p.rank, math.log2(p.rank), p.prefix, p.separate, p.gap, p.candidate, p.confirm]
            for lad in ladders for p in prefix_points(lad) if p.rank > 0 and p.prefix is not None]


def _log_prescreens(run: Any, ladders: list, objective: str) -> None:
    """Each nested prescreen's prefix curve beside its ladder's separately trained ranks: a table
    (``prescreen_curve``) and one line chart with both curves of every ladder (``prescreen_curve_plot``)."""
    import math

    import wandb

    rows = prescreen_rows(ladders)
    if not rows:
        return
    table = wandb.Table(columns=["ladder", "rank", "log2_rank", "prefix_value", "separate_value", "gap",
                                 "candidate", "confirm"], data=rows)
    xs, ys, names = [], [], []
    for lad in ladders:
        mine = [r for r in rows if r[0] == lad.key]
        done = lad.complete
        if not mine:
            continue
        label = "" if len(ladders) == 1 else f"{lad.key}: "
        xs.append([r[2] for r in mine])
        ys.append([r[3] for r in mine])
        names.append(f"{label}nested prescreen (one run)")
        if done:
            xs.append([math.log2(r.rank) for r in done])
            ys.append([float(r.mean) for r in done])  # type: ignore[arg-type]
            names.append(f"{label}separately trained")
    run.log({"prescreen_curve": table,
             "prescreen_curve_plot": wandb.plot.line_series(xs=xs, ys=ys, keys=names, xname="log2_rank",
                                                            title=f"{objective} vs log2(rank): nested prescreen "
                                                                  "and separately trained ranks")})


def log_sweep_summary(logger: Any, ladders: list, settings: Any, sweep_dir: Any, plot_path: Any) -> Optional[str]:
    """One W&B run per sweep with the rank curve (table + line plot + PNG), each nested prescreen's prefix
    curve beside it (:func:`_log_prescreens`), the recommendation, what each ladder cost and the recommended
    adapters (alias ``best``); returns its run folder (None with logger=none).
    ``ladders`` are :class:`ranksweep.sweep.results.Ladder`."""
    cfg = logger_config(logger)
    if not _enabled(cfg):
        return None
    import math

    import wandb

    s = settings

    def bounds(iv: Any) -> list:
        return [iv.est, iv.lo, iv.hi] if iv is not None else [None, None, None]

    rows = [[lad.key, r.rank, math.log2(r.rank), r.mean, r.std or 0.0, *bounds(r.gain), *bounds(r.vs_best),
             r.best_lr, r.lr_at_edge or "", r.lrs_tried, r.rung.still_falling, r.rung.effective_rank,
             r.rung.similarity, r.trainable_params or 0, r.rung.supervised_tokens or 0, r.state.name,
             ", ".join(r.fingerprints)]
            for lad in ladders for r in lad.rows() if r.mean is not None]  # each rung's row (Ladder.rows)
    with masked_argv(), _init_errors(cfg):  # W&B keeps the command line: a masked copy
        run = wandb.init(**init_args(cfg, sweep_dir), group=s.study_name, name=f"{s.study_name}-summary",
                         job_type="sweep-summary", tags=["sweep-summary"], reinit="finish_previous",
                         config={**s.to_record(), "ladders": [lad.key for lad in ladders]},  # storage masked
                         settings=wandb.Settings(console="off", x_disable_stats=True))
    table = wandb.Table(columns=["ladder", "rank", "log2_rank", s.objective, "std", "gain", "gain_lo", "gain_hi",
                                 "vs_best", "vs_best_lo", "vs_best_hi", "best_lr", "lr_at_edge", "lrs_tried",
                                 "still_falling", "effective_rank", "similarity_to_prev", "trainable_params",
                                 "supervised_tokens", "state", "eval_fingerprint"], data=rows)
    run.log({"rank_curve": table,
             "rank_curve_plot": wandb.plot.line(table, "log2_rank", s.objective, stroke="ladder",
                                                title=f"{s.objective} vs log2(rank)"),
             "rank_curve_png": wandb.Image(str(plot_path))})
    _log_prescreens(run, ladders, s.objective)
    for lad in ladders:
        rec = lad.recommendation
        prefix = "" if len(ladders) == 1 else f"{lad.key}/"
        run.summary[f"{prefix}recommended_rank"] = rec.rank if rec else None
        run.summary[f"{prefix}recommendation"] = rec.why if rec else None
        run.summary[f"{prefix}stop_reason"] = lad.stop_reason
        run.summary[f"{prefix}margin"] = lad.margin
        run.summary[f"{prefix}budget_bound"] = lad.budget_bound
        run.summary[f"{prefix}budget"] = lad.budget
        run.summary[f"{prefix}noise"] = lad.noise
        if lad.budget_check is not None:
            run.summary[f"{prefix}budget_check"] = lad.budget_check.to_dict()
        cost = lad.cost
        run.summary[f"{prefix}cost_steps"] = cost["steps"]
        run.summary[f"{prefix}cost_trials"] = cost["trials"]
        pre = lad.prescreen
        if pre is not None:
            run.summary[f"{prefix}prescreen_candidate"] = pre.candidate
            run.summary[f"{prefix}prescreen_verdict"] = str(pre.verdict) or "running"
            run.summary[f"{prefix}prescreen_confirm"] = list(pre.confirm)
            run.summary[f"{prefix}prescreen_fallback"] = pre.fallback or None
            run.summary[f"{prefix}prescreen_steps"] = cost["prescreen_steps"]
            run.summary[f"{prefix}prescreen_kendall_tau"] = (pre.agreement or {}).get("kendall_tau")
        for r in lad.complete:
            if r.best_lr is not None:
                run.summary[f"{prefix}best_lr/r{r.rank}"] = r.best_lr
            if r.lr_at_edge:
                run.summary[f"{prefix}lr_at_edge/r{r.rank}"] = r.lr_at_edge
    try:
        _log_best_adapters(run, ladders, s.study_name, Path(sweep_dir))
    except Exception as exc:  # the summary run is still worth keeping without the artifacts
        import logging

        logging.getLogger("ranksweep.sweep").warning("best adapter not logged to W&B: %s", exc)
    out = str(os.path.dirname(run.dir))
    run.finish()
    return out
