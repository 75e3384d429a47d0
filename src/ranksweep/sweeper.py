"""The rank-doubling sweep: Optuna is the record, Hydra's launcher runs the jobs.

For every combination of the other sweep overrides (``lora.targets=attention,all_linear``)
there is one *ladder*: the untrained base is evaluated once, then ranks
``start_rank * factor**k`` are trained until the stop rule of
:mod:`ranksweep.ladder` fires. Each job is one Optuna trial; the study holds
its params (the axes, ``rank``, ``seed``), its objective, its intermediate eval
values and user attributes. Rerunning the same command resumes from the study.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ranksweep import ladder as ladder_mod
from ranksweep import summary as summary_mod
from ranksweep.errors import ConfigError, RanksweepError
from ranksweep.storage import open_storage

log = logging.getLogger("ranksweep.sweep")
# We drive heartbeats ourselves (around each launch), not through Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what happens

RANK_DIST = IntDistribution(0, 1 << 20)
SEED_DIST = IntDistribution(0, 1 << 16)
# Overrides the sweeper owns: a user setting them would fight the ladder.
OWNED = ("lora.r", "trial.storage", "trial.study_name", "trial.trial_number", "trial.parent_trial_number")
SPACE_ATTR = "ranksweep_space"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepAborted(RanksweepError):
    """Too many trials failed (past ``max_failure_rate``)."""


@dataclass
class Item:
    """One job to run: (ladder, rank, seed); rank 0 is the base evaluation."""

    ladder: str
    combo: tuple[str, ...]
    rank: int
    seed: int
    parent: Optional[int] = None
    base_value: Optional[float] = None


@dataclass
class LadderState:
    key: str
    combo: tuple[str, ...]
    axes: dict[str, str]
    done: bool = False
    stop_reason: str = ""
    shares: list = field(default_factory=list)


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class RankSweep:
    """The sweep logic behind ``hydra/sweeper=ranksweep``."""

    def __init__(self, study_name: str = "ranksweep", storage: Optional[str] = None, start_rank: int = 8,
                 factor: int = 2, max_rank: int = 512, min_gain: float = 0.05, patience: int = 2,
                 seeds_per_rank: int = 1, tolerance: float = 0.05, direction: str = "minimize",
                 objective: str = "eval_loss", max_failure_rate: float = 0.5, pruner: str = "parent",
                 prune_after: float = 0.75, prune_margin: float = 0.1, parallel: int = 1,
                 heartbeat_interval: int = 10, grace_period: int = 30, poll_s: float = 5.0,
                 params: Optional[dict] = None) -> None:
        k = "hydra.sweeper."
        self.ranks = ladder_mod.rank_ladder(start_rank, factor, max_rank)  # validates the three
        if not study_name or not str(study_name).strip():
            raise ConfigError(f"{k}study_name must not be empty")
        if direction not in ("minimize", "maximize"):
            raise ConfigError(f"{k}direction must be minimize or maximize, got {direction!r}")
        want = "maximize" if objective == "exact_match" else "minimize"
        if objective not in ("eval_loss", "perplexity", "exact_match"):
            raise ConfigError(f"{k}objective must be eval_loss, perplexity or exact_match, got {objective!r}")
        if direction != want:
            raise ConfigError(f"{k}direction must be {want} for objective={objective}, got {direction}")
        if not (isinstance(seeds_per_rank, int) and seeds_per_rank >= 1):
            raise ConfigError(f"{k}seeds_per_rank must be a positive integer, got {seeds_per_rank!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ConfigError(f"{k}patience must be a positive integer, got {patience!r}")
        if not 0 <= min_gain < 1:
            raise ConfigError(f"{k}min_gain must be in [0, 1), got {min_gain!r}")
        if not 0 <= tolerance < 1:
            raise ConfigError(f"{k}tolerance must be in [0, 1), got {tolerance!r}")
        if not 0 <= max_failure_rate <= 1:
            raise ConfigError(f"{k}max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
        if pruner not in ("parent", "none"):
            raise ConfigError(f"{k}pruner must be parent or none, got {pruner!r}")
        if not (isinstance(parallel, int) and parallel >= 1):
            raise ConfigError(f"{k}parallel must be a positive integer, got {parallel!r}")
        self.study_name = str(study_name)
        self.storage_url = storage or "sqlite:///outputs/ranksweep.db"
        self.factor, self.max_rank, self.start_rank = factor, max_rank, start_rank
        self.rule = ladder_mod.StopRule(min_gain=min_gain, patience=patience)
        self.seeds = seeds_per_rank
        self.tolerance = tolerance
        self.direction = direction
        self.objective = objective
        self.max_failure_rate = max_failure_rate
        self.pruner = pruner
        self.prune_after, self.prune_margin = prune_after, prune_margin
        self.parallel = parallel
        self.heartbeat = (heartbeat_interval, grace_period)
        self.poll_s = poll_s
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: Optional[DictConfig] = None

    # -- Hydra plumbing -------------------------------------------------------------------
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def _open_study(self, space: dict) -> optuna.Study:
        from ranksweep import storage as storage_mod

        storage_mod.HEARTBEAT_S, storage_mod.GRACE_S = self.heartbeat
        self.storage = open_storage(self.storage_url, heartbeat=True)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                        direction=self.direction, load_if_exists=True)
        except Exception as exc:
            raise ConfigError(f"hydra.sweeper.storage: cannot create study {self.study_name!r}: "
                              f"{' '.join(str(exc).split())[:200]}") from exc
        if study.direction.name.lower() != self.direction:
            raise ConfigError(f"hydra.sweeper.study_name: study {self.study_name!r} exists with direction "
                              f"{study.direction.name.lower()}; use a new study_name")
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored is None:
            if study.get_trials(deepcopy=False):
                raise ConfigError(f"hydra.sweeper.study_name: study {self.study_name!r} already holds trials "
                                  "that ranksweep did not create; use a new study_name")
            study.set_user_attr(SPACE_ATTR, space)
        elif stored != space:
            diff = [k for k in sorted(set(stored) | set(space)) if stored.get(k) != space.get(k)]
            raise ConfigError(
                f"hydra.sweeper.study_name: study {self.study_name!r} was created with a different search "
                f"space (differs in: {', '.join(diff)}; stored {json.dumps({k: stored.get(k) for k in diff})}); "
                "rerun with the same overrides to resume, or pick a new study_name")
        return study

    # -- overrides -------------------------------------------------------------------------
    def _parse(self, arguments: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
        parser = OverridesParser.create()
        fixed: list[str] = []
        axes: list[tuple[str, list[str]]] = []
        given = {o.get_key_element().lstrip("+~") for o in parser.parse_overrides(list(arguments))}
        preset = [f"{k}={v}" for k, v in self.params.items() if k not in given]
        for o in parser.parse_overrides(preset + list(arguments)):
            key = o.get_key_element()
            if key.lstrip("+~") in OWNED:
                raise ConfigError(f"{key.lstrip('+~')} is set by the rank ladder; use hydra.sweeper.start_rank, "
                                  "factor and max_rank instead")
            if o.is_sweep_override():
                if o.is_interval_sweep():
                    raise ConfigError(f"{key}: interval sweeps are not supported; list the values")
                axes.append((key, [f"{key}={v}" for v in o.sweep_string_iterator()]))
            else:
                fixed.append(o.input_line)
        return fixed, axes

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, arguments: Sequence[str]) -> list:
        assert self.config is not None
        fixed, axes = self._parse(arguments)
        combos = list(itertools.product(*[vals for _, vals in axes])) if axes else [()]
        ladders = {}
        for combo in combos:
            key = " ".join(combo) or "default"
            ladders[key] = LadderState(key=key, combo=tuple(combo),
                                       axes={c.split("=", 1)[0]: c.split("=", 1)[1] for c in combo})
        space = {
            "ladders": sorted(ladders), "fixed": sorted(fixed), "start_rank": self.start_rank,
            "factor": self.factor, "seeds_per_rank": self.seeds, "objective": self.objective,
        }
        self.fixed = fixed
        for lad in ladders.values():  # bad overrides fail here, before anything is stored
            self._validate(lad)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = self._open_study(space)
        self.axis_dists = {k: CategoricalDistribution(sorted({c.split("=", 1)[1] for c in vals}))
                           for k, vals in axes}
        log.info("study %r in %s: %d ladder(s) %s, ranks %s", self.study_name, self._masked_url(),
                 len(ladders), ", ".join(ladders), self.ranks)
        all_returns: list = []
        while True:
            optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            self._check_failures(trials)
            todo, waiting = self._plan(ladders, trials)
            if not todo:
                if waiting:  # another worker holds a trial we need: wait for it
                    time.sleep(self.poll_s)
                    continue
                break
            all_returns.extend(self._run_batch(study, todo))
        return self._finish(study, ladders, all_returns)

    def _validate(self, lad: LadderState) -> None:
        """Compose one job config of this ladder and validate it like a trial would."""
        from ranksweep.config import to_run_config

        overrides = self._overrides(Item(lad.key, lad.combo, self.start_rank, 0), 0)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.pop("hydra", None)
        to_run_config(cfg)

    def _masked_url(self) -> str:
        from ranksweep.tracking import mask_secrets

        return mask_secrets(self.storage_url)

    def _index(self, trials: Sequence[FrozenTrial]) -> dict[tuple[str, int, int], list[FrozenTrial]]:
        idx: dict[tuple[str, int, int], list[FrozenTrial]] = {}
        for t in trials:
            a = t.user_attrs
            if "ladder" in a:
                idx.setdefault((a["ladder"], int(a["rank"]), int(a["seed"])), []).append(t)
        return idx

    @staticmethod
    def _status(ts: list[FrozenTrial]) -> tuple[str, Optional[FrozenTrial]]:
        """done / running / failed / todo for one (ladder, rank, seed)."""
        for t in ts:
            if t.state in FINISHED:
                return "done", t
        for t in ts:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                return "running", t
        for t in ts:
            if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind"):
                return "failed", t  # a real failure (not a killed worker): not retried
        return "todo", None

    @staticmethod
    def _value(t: FrozenTrial) -> Optional[float]:
        if t.state == TrialState.COMPLETE:
            return float(t.value)  # type: ignore[arg-type]
        if t.state == TrialState.PRUNED and t.intermediate_values:
            return float(t.intermediate_values[t.last_step])  # type: ignore[index]
        return None

    def _plan(self, ladders: dict[str, LadderState], trials) -> tuple[list[Item], bool]:
        """What to run next: base evaluations, then each ladder's next unfinished rank(s)."""
        idx = self._index(trials)
        todo: list[Item] = []
        waiting = False
        for lad in ladders.values():
            base_status, base_t = self._status(idx.get((lad.key, 0, 0), []))
            if base_status == "failed":
                lad.done, lad.stop_reason = True, f"base evaluation failed: {base_t.user_attrs.get('fail_reason')}"
                continue
            if base_status == "running":
                waiting = True
                continue
            if base_status == "todo":
                todo.append(Item(lad.key, lad.combo, 0, 0))
                continue
            base = self._value(base_t)
            statuses = {r: [self._status(idx.get((lad.key, r, s), [])) for s in range(self.seeds)]
                        for r in self.ranks}
            finished = {r: all(st in ("done", "failed") for st, _ in sts) for r, sts in statuses.items()}
            # The stop rule sees the finished prefix of the ladder (failed ranks are skipped).
            ranks, values = [], []
            for r in self.ranks:
                if not finished[r]:
                    break
                vals = [self._value(t) for st, t in statuses[r] if st == "done"]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                if vals:
                    ranks.append(r)
                    values.append(vals)
            if ranks:
                decision = ladder_mod.decide(self.rule, base, ranks, values, self.direction, self.max_rank,
                                             self.factor)
                lad.shares = decision.shares
                if decision.stop:
                    lad.done, lad.stop_reason = True, decision.reason
                    continue
            unfinished = [r for r in self.ranks if not finished[r]]
            if not unfinished:
                lad.done, lad.stop_reason = True, f"reached max_rank={self.max_rank}"
                continue
            # Speculative doubling: up to `parallel` ranks of this ladder at once.
            for r in unfinished[: self.parallel]:
                i = self.ranks.index(r)
                parent = self._parent(idx, lad.key, self.ranks[i - 1]) if i > 0 else None
                for s, (st, _) in enumerate(statuses[r]):
                    if st == "todo":
                        todo.append(Item(lad.key, lad.combo, r, s, parent=parent, base_value=base))
                    elif st == "running":
                        waiting = True
        return todo, waiting

    def _parent(self, idx, key: str, rank: int) -> Optional[int]:
        if self.pruner != "parent":
            return None
        st, t = self._status(idx.get((key, rank, 0), []))
        return t.number if st == "done" and t is not None and t.state == TrialState.COMPLETE else None

    def _check_failures(self, trials: Sequence[FrozenTrial]) -> None:
        failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind")]
        finished = [t for t in trials if t.state in FINISHED] + failed
        if len(failed) >= 2 and len(failed) / max(len(finished), 1) > self.max_failure_rate:
            last = failed[-1].user_attrs.get("fail_reason", "?")
            raise SweepAborted(f"aborting sweep: {len(failed)} of {len(finished)} trials failed "
                               f"(hydra.sweeper.max_failure_rate={self.max_failure_rate}); last: {last}")

    def _overrides(self, item: Item, number: int) -> list[str]:
        ov = list(self.fixed) + list(item.combo)
        ov += [
            f"lora.r={item.rank if item.rank > 0 else self.start_rank}",
            f"trainer.seed={item.seed}",
            f"objective={self.objective}",
            f"trial.storage={_quote(self.storage_url)}",
            f"trial.study_name={_quote(self.study_name)}",
            f"trial.trial_number={number}",
            f"trial.prune_after={self.prune_after}",
            f"trial.prune_margin={self.prune_margin}",
            f"logger.group={_quote(self.study_name)}",
            f"hydra.sweep.subdir={_quote(self._subdir(item, number))}",
        ]
        if item.parent is not None:
            ov.append(f"trial.parent_trial_number={item.parent}")
        if item.rank == 0:  # the base: an untrained adapter (LoRA B = 0) is the base model
            ov.append("trainer.max_steps=0")
            if self.objective != "exact_match":
                ov.append("data.metric_examples=0")
        return ov

    def _subdir(self, item: Item, number: int) -> str:
        what = "base" if item.rank == 0 else f"r{item.rank}-s{item.seed}"
        return f"trial-{number:04d}-{what}"

    def _run_batch(self, study: optuna.Study, todo: list[Item]) -> list:
        from optuna.storages._heartbeat import get_heartbeat_thread

        asked = []
        for item in todo:
            trial = study.ask()
            tid = trial._trial_id
            for k, dist in self.axis_dists.items():
                value = dict(c.split("=", 1) for c in item.combo)[k]
                self.storage.set_trial_param(tid, k, dist.to_internal_repr(value), dist)
            self.storage.set_trial_param(tid, "rank", float(item.rank), RANK_DIST)
            self.storage.set_trial_param(tid, "seed", float(item.seed), SEED_DIST)
            attrs = {"ladder": item.ladder, "rank": item.rank, "seed": item.seed,
                     "role": "base" if item.rank == 0 else "rung",
                     "output_dir": str(self.sweep_dir / self._subdir(item, trial.number))}
            if item.parent is not None:
                attrs["parent_trial_number"] = item.parent
            if item.base_value is not None:
                attrs["base_value"] = item.base_value
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            asked.append((item, trial))
            log.info("trial %d: %s %s seed %d", trial.number, item.ladder,
                     "base (untrained)" if item.rank == 0 else f"r={item.rank}", item.seed)
        beats = [get_heartbeat_thread(t._trial_id, self.storage) for _, t in asked]
        for b in beats:
            b.start()
        try:
            returns = self.launcher.launch([self._overrides(i, t.number) for i, t in asked],
                                           initial_job_idx=asked[0][1].number)
        finally:
            for b in beats:
                b.join()
        user_error: Optional[RanksweepError] = None
        from hydra.core.utils import JobStatus

        from ranksweep.trial import TrialPruned

        for (item, trial), ret in zip(asked, returns):
            try:
                # JobReturn.return_value re-raises a job's exception after printing its overrides;
                # read the status and the stored value instead.
                if ret.status != JobStatus.COMPLETED:
                    raise ret._return_value
                value = float(ret._return_value)
                if not math.isfinite(value):
                    raise ValueError(f"the job returned a non-finite objective {value}")
                study.tell(trial, value)
            except Exception as exc:  # the job failed, was pruned, or returned garbage

                if isinstance(exc, TrialPruned):
                    study.tell(trial, state=TrialState.PRUNED)
                    log.info("trial %d pruned: %s", trial.number, exc)
                    continue
                kind = getattr(exc, "kind", None) or ("user" if isinstance(exc, RanksweepError) else "error")
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                trial.set_user_attr("failure_kind", kind)
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed (%s): %s", trial.number, kind, reason)
                if isinstance(exc, RanksweepError) and user_error is None:
                    user_error = exc
        if user_error is not None:  # bad input fails every trial alike: stop at once
            raise user_error
        return list(returns)

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, ladders: dict[str, LadderState], returns: list) -> list:
        trials = study.get_trials(deepcopy=False)
        idx = self._index(trials)
        built = []
        for lad in ladders.values():
            base_status, base_t = self._status(idx.get((lad.key, 0, 0), []))
            base = self._value(base_t) if base_status == "done" and base_t is not None else None
            rungs = []
            for r in self.ranks:
                ts = [self._status(idx.get((lad.key, r, s), [])) for s in range(self.seeds)]
                if all(st == "todo" for st, _ in ts):
                    continue
                ts_ = [t for _, t in ts if t is not None]
                vals = [v for v in (self._value(t) for t in ts_) if v is not None]
                states = {t.state.name for t in ts_}
                state = "COMPLETE" if states == {"COMPLETE"} else ("FAIL" if "FAIL" in states and not vals
                                                                   else "PRUNED" if "PRUNED" in states
                                                                   else sorted(states)[0])
                ua = ts_[0].user_attrs if ts_ else {}
                mean = sum(vals) / len(vals) if vals else None
                std = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                       if mean is not None and len(vals) > 1 else (0.0 if vals else None))
                rungs.append({
                    "rank": r, "alpha": ua.get("alpha"), "values": vals, "mean": mean, "std": std,
                    "trial_numbers": [t.number for t in ts_],
                    "trainable_params": ua.get("trainable_params"),
                    "duration_s": sum(float(t.user_attrs.get("duration_s", 0.0)) for t in ts_),
                    "peak_mem_gb": max([float(t.user_attrs.get("peak_mem_gb", 0.0)) for t in ts_] or [0.0]),
                    "state": state,
                    "fail_reason": "; ".join(t.user_attrs.get("fail_reason", "") for t in ts_
                                             if t.state == TrialState.FAIL) or None,
                    "output_dirs": [t.user_attrs.get("output_dir") for t in ts_],
                    "wandb_runs": [t.user_attrs.get("wandb_run") for t in ts_],
                })
            built.append(summary_mod.build_ladder(
                key=lad.key, direction=self.direction, objective=self.objective, base=base, rungs=rungs,
                stop_reason=lad.stop_reason or "incomplete", tolerance=self.tolerance))
        summary_path = self.sweep_dir / "sweep_summary.json"
        plot_path = self.sweep_dir / "rank_curve.png"
        summary_mod.write_summary(summary_path, built, meta={
            "study_name": self.study_name, "storage": self._masked_url(), "ranks": self.ranks,
            "min_gain": self.rule.min_gain, "patience": self.rule.patience, "seeds_per_rank": self.seeds,
            "tolerance": self.tolerance, "objective": self.objective, "direction": self.direction})
        summary_mod.plot_rank_curve(plot_path, built)
        table = summary_mod.format_table(built)
        print(table, flush=True)
        print(f"summary: {summary_path}\nplot:    {plot_path}\nstudy:   {self.study_name} in {self._masked_url()}",
              flush=True)
        self._wandb_summary(built, plot_path)
        return returns

    def _wandb_summary(self, built: list, plot_path: Path) -> None:
        """One W&B run per sweep with the rank curve (table + line plot) and the recommendation."""
        assert self.config is not None
        lg = self.config.get("logger") or {}
        if not lg.get("enabled", False) or lg.get("mode") == "disabled":
            return
        import wandb

        rows = []
        for lad in built:
            for rung in lad["rungs"]:
                if rung.get("mean") is not None:
                    rows.append([lad["key"], rung["rank"], math.log2(rung["rank"]), rung["mean"],
                                 rung.get("std") or 0.0, rung.get("trainable_params") or 0, rung["state"]])
        run = wandb.init(project=lg.get("project", "ranksweep"), entity=lg.get("entity"), mode=lg.get("mode"),
                         dir=str(self.sweep_dir), group=self.study_name, name=f"{self.study_name}-summary",
                         job_type="sweep-summary", tags=["sweep-summary"], reinit="finish_previous",
                         config={"study_name": self.study_name, "objective": self.objective,
                                 "ranks": self.ranks, "min_gain": self.rule.min_gain,
                                 "patience": self.rule.patience, "ladders": [b["key"] for b in built]},
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        table = wandb.Table(columns=["ladder", "rank", "log2_rank", self.objective, "std", "trainable_params",
                                     "state"], data=rows)
        run.log({"rank_curve": table,
                 "rank_curve_plot": wandb.plot.line(table, "log2_rank", self.objective, stroke="ladder",
                                                    title=f"{self.objective} vs log2(rank)"),
                 "rank_curve_png": wandb.Image(str(plot_path))})
        for lad in built:
            rec = lad.get("recommendation") or {}
            prefix = "" if len(built) == 1 else f"{lad['key']}/"
            run.summary[f"{prefix}recommended_rank"] = rec.get("rank")
            run.summary[f"{prefix}recommendation"] = rec.get("why")
            run.summary[f"{prefix}stop_reason"] = lad.get("stop_reason")
        self.summary_run_dir = str(Path(run.dir).parent)
        run.finish()
