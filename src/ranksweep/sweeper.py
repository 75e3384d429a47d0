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
import os
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ranksweep import ladder as ladder_mod
from ranksweep import plan
from ranksweep import summary as summary_mod
from ranksweep.errors import ConfigError, RanksweepError
from ranksweep.locks import study_lock
from ranksweep.storage import DEFAULT_STORAGE_URL, open_storage

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
FINISHED = plan.FINISHED


class SweepAborted(RanksweepError):
    """Too many trials failed (past ``max_failure_rate``)."""


@dataclass
class Claim:
    """A job this worker created a trial for and will run."""

    item: plan.Item
    trial: optuna.trial.Trial
    parent: int | None = None


class _AttrHeartbeat:
    """A heartbeat for storages without Optuna's (JournalStorage): a timestamp user attribute."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        import threading

        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat_at", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # another worker declared this one dead; _tell says so
            if self.stop.wait(self.interval):
                return

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join()


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class RankSweep:
    """The sweep logic behind ``hydra/sweeper=ranksweep``."""

    def __init__(self, study_name: str = "ranksweep", storage: str | None = None, start_rank: int = 8,
                 factor: int = 2, max_rank: int = 512, min_gain: float = 0.05, patience: int = 2,
                 seeds_per_rank: int = 1, tolerance: float = 0.05, direction: str = "minimize",
                 objective: str = "eval_loss", max_failure_rate: float = 0.5, pruner: str = "parent",
                 prune_after: float = 0.75, prune_margin: float = 0.1, parallel: int = 1,
                 heartbeat_interval: int = 10, grace_period: int = 30, poll_s: float = 5.0,
                 params: dict | None = None, n_jobs: int = 1) -> None:
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
        if not (isinstance(n_jobs, int) and n_jobs >= 1):
            raise ConfigError(f"{k}n_jobs must be a positive integer, got {n_jobs!r}")
        if not (isinstance(parallel, int) and parallel >= 1):
            raise ConfigError(f"{k}parallel must be a positive integer, got {parallel!r}")
        self.study_name = str(study_name)
        self.storage_url = storage or DEFAULT_STORAGE_URL
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
        self.n_jobs = n_jobs
        self.heartbeat = (heartbeat_interval, grace_period)
        self.poll_s = poll_s
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: DictConfig | None = None
        self._bar: Any = None
        self._fit_cache: dict[tuple[str, int], str | None] = {}
        self._skipped = False

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
        # The stop-rule settings, for readers of the study (report); they may change between runs.
        study.set_user_attr("ranksweep_settings", {
            "ranks": self.ranks, "max_rank": self.max_rank, "min_gain": self.rule.min_gain,
            "patience": self.rule.patience, "tolerance": self.tolerance, "direction": self.direction})
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
        # One ladder per combination of the other axes: (key, combo), key "default" when there are none.
        self.specs = [(" ".join(combo) or "default", tuple(combo)) for combo in combos]
        ladders = [key for key, _ in self.specs]
        space = {
            "ladders": sorted(ladders), "fixed": sorted(fixed), "start_rank": self.start_rank,
            "factor": self.factor, "seeds_per_rank": self.seeds, "objective": self.objective,
        }
        self.fixed = fixed
        for key, combo in self.specs:  # bad overrides fail here, before anything is stored
            self._validate(key, combo)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.study = study = self._open_study(space)
        self.axis_dists = {k: CategoricalDistribution(sorted({c.split("=", 1)[1] for c in vals}))
                           for k, vals in axes}
        self.settings = plan.Settings(ranks=self.ranks, seeds=self.seeds, rule=self.rule,
                                      direction=self.direction, max_rank=self.max_rank, factor=self.factor)
        slots = self._slots()
        log.info("study %r in %s: %d ladder(s) %s, ranks %s, %d job(s) at a time", self.study_name,
                 self._masked_url(), len(ladders), ", ".join(ladders), self.ranks, slots)
        returns: list = []
        inflight: dict[Future, Claim] = {}
        pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ranksweep-job") if slots > 1 else None
        try:
            while True:
                claimed: list[Claim] = []
                running_elsewhere = False
                self._skipped = False
                if slots - len(inflight) > 0:
                    claimed, running_elsewhere = self._claim(slots - len(inflight))
                for c in claimed:
                    if pool is None:
                        try:
                            ret = self._launch(c)
                        except Exception as exc:  # the launcher itself failed
                            ret = exc
                        returns.append(self._tell(c, ret))
                    else:
                        inflight[pool.submit(self._launch, c)] = c
                if inflight:  # no barrier: whichever job ends first frees its slot
                    done, _ = wait(list(inflight), timeout=self.poll_s, return_when=FIRST_COMPLETED)
                    for fut in done:
                        c = inflight.pop(fut)
                        try:
                            ret = fut.result()
                        except Exception as exc:  # the launcher itself failed (lost job, unreadable result)
                            ret = exc
                        returns.append(self._tell(c, ret))
                    continue
                if claimed or self._skipped:  # a skipped rank ends its ladder: plan again at once
                    continue
                if running_elsewhere:  # another worker holds a job this ladder needs
                    time.sleep(self.poll_s)
                    continue
                break
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return self._finish(study)

    def _slots(self) -> int:
        """Jobs this worker keeps in flight: ``n_jobs``, or 1 with Hydra's in-process launcher."""
        if self.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
            log.warning("hydra.sweeper.n_jobs=%d needs an out-of-process launcher (hydra/launcher=joblib, "
                        "submitit_local, submitit_slurm); running one job at a time", self.n_jobs)
            return 1
        return self.n_jobs

    def _claim(self, free: int) -> tuple[list[Claim], bool]:
        """Under the study lock: mark dead workers' trials, plan, and create this worker's next trials."""
        with study_lock(self.storage_url, self.study_name):
            if self._rdb:
                optuna.storages.fail_stale_trials(self.study)
            else:
                self._fail_stale_journal()
            trials = self.study.get_trials(deepcopy=False)
            self._check_failures(trials)
            idx = plan.index_trials(trials)
            views = [plan.evaluate(k, combo, idx, self.settings) for k, combo in self.specs]
            for v in views:  # the stop rule fired: cancel the speculative ranks it made unnecessary
                for t in plan.unneeded_running(v):
                    if "cancel_reason" not in t.user_attrs:
                        self.storage.set_trial_user_attr(
                            t._trial_id, "cancel_reason", f"not needed: the ladder stopped at r={v.stop_rank}")
                        log.info("trial %d (r=%s) cancelled: the ladder stopped at r=%s", t.number,
                                 t.user_attrs.get("rank"), v.stop_rank)
            cands, running = plan.candidates(views, self.seeds, self.parallel)
            by_key = {v.key: v for v in views}
            created: dict[tuple[str, int, int], int] = {}
            claims: list[Claim] = []
            blocked: dict[str, int] = {}  # ladder -> a rank that does not fit: larger ones need more
            for item, _ in cands:
                if len(claims) >= free:
                    break
                if item.rank > blocked.get(item.ladder, 1 << 30):
                    continue
                reason = self._infeasible(item)
                claim = self._create(item, idx, created, by_key[item.ladder])
                if reason is None:
                    claims.append(claim)
                else:  # recorded, not run: the stop rule ends the ladder at the last rank that fits
                    blocked[item.ladder] = item.rank
                    claim.trial.set_user_attr("failure_kind", "infeasible")
                    claim.trial.set_user_attr("fail_reason", reason)
                    self.study.tell(claim.trial, state=TrialState.FAIL)
                    log.warning("trial %d (%s r=%d) skipped: %s", claim.trial.number, item.ladder, item.rank, reason)
                    self._skipped = True
        return claims, running

    def _infeasible(self, item: plan.Item) -> str | None:
        """Why the trial would not fit the device (memory estimate over the limit), or None.

        The base evaluation (rank 0) is never skipped: it trains nothing. Cached per (ladder, rank).
        """
        if item.rank == 0:
            return None
        key = (item.ladder, item.rank)
        if key not in self._fit_cache:
            from ranksweep.memory import plan_memory, run_device

            run = self._run_config(item)
            mem = plan_memory(run, run_device(run))
            self._fit_cache[key] = None if mem.fits else (
                f"would not fit: {mem.describe()} (trainer.memory_limit_gb; `ranksweep estimate` shows the parts)")
        return self._fit_cache[key]

    @property
    def _rdb(self) -> bool:
        return isinstance(self.storage, optuna.storages.RDBStorage)

    def _fail_stale_journal(self) -> None:
        """Optuna's heartbeat is RDB-only; on a journal file a trial's worker beats a user attribute."""
        grace = self.heartbeat[1]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.user_attrs.get("heartbeat_at")
            if last is not None and time.time() - float(last) > grace:
                try:
                    self.storage.set_trial_user_attr(
                        t._trial_id, "fail_reason", f"worker {t.user_attrs.get('worker')} stopped (no heartbeat)")
                    self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # its worker finished it meanwhile: alive after all
                log.warning("trial %d: its worker stopped beating; it will run again", t.number)

    def _create(self, item: plan.Item, idx, created: dict, view: plan.LadderView) -> Claim:
        trial = self.study.ask()
        tid = trial._trial_id
        axes = dict(c.split("=", 1) for c in item.combo)
        for k, dist in self.axis_dists.items():
            self.storage.set_trial_param(tid, k, dist.to_internal_repr(axes[k]), dist)
        self.storage.set_trial_param(tid, "rank", float(item.rank), RANK_DIST)
        self.storage.set_trial_param(tid, "seed", float(item.seed), SEED_DIST)
        attrs: dict[str, Any] = {"ladder": item.ladder, "rank": item.rank, "seed": item.seed,
                                 "role": "base" if item.rank == 0 else "rung",
                                 "worker": f"{socket.gethostname()}:{os.getpid()}",
                                 "output_dir": str(self.sweep_dir / self._subdir(item, trial.number))}
        parent = self._parent(item, idx, created)
        if parent is not None:
            attrs["parent_trial_number"] = parent
        if view.base is not None:
            attrs["base_value"] = view.base
            _, base_t = plan.status(idx.get((item.ladder, 0, 0), []))
            if base_t is not None and base_t.user_attrs.get("eval_loss") is not None:
                attrs["base_eval_loss"] = base_t.user_attrs["eval_loss"]  # the pruner's reference
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        created[(item.ladder, item.rank, item.seed)] = trial.number
        log.info("trial %d: %s %s seed %d", trial.number, item.ladder,
                 "base (untrained)" if item.rank == 0 else f"r={item.rank}", item.seed)
        return Claim(item, trial, parent)

    def _parent(self, item: plan.Item, idx, created: dict) -> int | None:
        """The same seed's trial at the previous rank (running or done), for rank-aware pruning."""
        if item.rank == 0 or item.rank == self.ranks[0]:
            return None
        key = (item.ladder, self.ranks[self.ranks.index(item.rank) - 1], item.seed)
        if key in created:
            return created[key]
        st, t = plan.status(idx.get(key, []))
        return t.number if t is not None and st in ("done", "running") else None

    def _validate(self, key: str, combo: tuple[str, ...]) -> None:
        """Compose one job config of this ladder and validate it like a trial would."""
        self._run_config(plan.Item(key, combo, self.start_rank, 0))

    def _run_config(self, item: plan.Item) -> Any:
        """The validated :class:`ranksweep.config.RunConfig` of the job ``item``, as its trial will see it."""
        from ranksweep.config import to_run_config

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, self._overrides(item, 0))
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return to_run_config(cfg)

    def _masked_url(self) -> str:
        from ranksweep.tracking import mask_secrets

        return mask_secrets(self.storage_url)

    def _check_failures(self, trials: Sequence[FrozenTrial]) -> None:
        failed = [t for t in trials if t.state == TrialState.FAIL
                  and t.user_attrs.get("failure_kind") not in (None, "infeasible")]
        finished = [t for t in trials if t.state in FINISHED] + failed
        if len(failed) >= 2 and len(failed) / max(len(finished), 1) > self.max_failure_rate:
            last = failed[-1].user_attrs.get("fail_reason", "?")
            raise SweepAborted(f"aborting sweep: {len(failed)} of {len(finished)} trials failed "
                               f"(hydra.sweeper.max_failure_rate={self.max_failure_rate}); last: {last}")

    def _overrides(self, item: plan.Item, number: int, parent: int | None = None) -> list[str]:
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
            f"trial.pruner={self.pruner}",
            f"logger.group={_quote(self.study_name)}",
            f"hydra.sweep.subdir={_quote(self._subdir(item, number))}",
        ]
        if parent is not None:
            ov.append(f"trial.parent_trial_number={parent}")
        if item.rank == 0:  # the base: an untrained adapter (LoRA B = 0) is the base model
            ov.append("trainer.max_steps=0")
            if self.objective != "exact_match":
                ov.append("data.metric_examples=0")
        return ov

    def _subdir(self, item: plan.Item, number: int) -> str:
        what = "base" if item.rank == 0 else f"r{item.rank}-s{item.seed}"
        return f"trial-{number:04d}-{what}"

    def _launch(self, c: Claim) -> Any:
        """Run one job through Hydra's launcher while a heartbeat says its worker is alive."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        beat = (get_heartbeat_thread(c.trial._trial_id, self.storage) if self._rdb
                else _AttrHeartbeat(self.storage, c.trial._trial_id, self.heartbeat[0]))
        beat.start()
        try:
            (ret,) = self.launcher.launch([self._overrides(c.item, c.trial.number, c.parent)],
                                          initial_job_idx=c.trial.number)
        finally:
            beat.join()
        return ret

    def _tell(self, c: Claim, ret: Any) -> Any:
        """Record a finished job in the study: COMPLETE, PRUNED or FAIL with its reason."""
        trial = c.trial
        try:
            self._record(c, ret)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker missed this worker's heartbeat for grace_period and marked the
            # trial failed; its (ladder, rank, seed) runs again. Raise grace_period if this repeats.
            log.warning("trial %d was marked failed by another worker (missed heartbeats); its result "
                        "is dropped and the job runs again", trial.number)
        self._progress(c)
        return ret

    def _record(self, c: Claim, ret: Any) -> None:
        from hydra.core.utils import JobStatus

        from ranksweep.trial import TrialPruned

        trial = c.trial
        try:
            # JobReturn.return_value re-raises a job's exception after printing its overrides;
            # read the status and the stored value instead.
            if isinstance(ret, BaseException):
                raise ret
            if ret.status != JobStatus.COMPLETED:
                raise ret._return_value
            value = float(ret._return_value)
            if not math.isfinite(value):
                raise ValueError(f"the job returned a non-finite objective {value}")
            self.study.tell(trial, value)
        except TrialPruned as exc:
            self.study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s", trial.number, exc)
        except Exception as exc:  # the job failed or returned garbage
            kind = getattr(exc, "kind", None) or ("user" if isinstance(exc, RanksweepError) else "error")
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            trial.set_user_attr("failure_kind", kind)
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed (%s): %s", trial.number, kind, reason)
            if isinstance(exc, RanksweepError):  # bad input fails every trial alike: stop at once
                raise

    def _progress(self, last: Claim) -> None:
        """One line per finished trial (a bar on a terminal): done, failed, planned, rank, ETA."""
        trials = self.study.get_trials(deepcopy=False)
        idx = plan.index_trials(trials)
        views = [plan.evaluate(k, combo, idx, self.settings) for k, combo in self.specs]
        done = [t for t in trials if t.state in FINISHED and "ladder" in t.user_attrs]
        failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind"))
        # At least: each open ladder's base, or its next rank for every seed.
        ahead = sum(1 if v.base_status != "done" else self.seeds for v in views if not v.done)
        secs = [float(t.user_attrs["duration_s"]) for t in done if "duration_s" in t.user_attrs]
        eta = (sum(secs) / len(secs)) * ahead / max(self.n_jobs, 1) if secs and ahead else 0.0
        rank = "base" if last.item.rank == 0 else f"r={last.item.rank}"
        line = (f"sweep {self.study_name}: {len(done)} done, {failed} failed, >= {ahead} to go; last {rank} "
                f"({last.item.ladder}); ladders done {sum(v.done for v in views)}/{len(views)}"
                + (f"; ETA >= {eta / 60:.1f} min" if ahead else ""))
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(desc="sweep", unit="trial", dynamic_ncols=True)
            self._bar.total = len(done) + failed + ahead
            self._bar.n = len(done) + failed
            self._bar.set_postfix_str(f"{rank} ({last.item.ladder}), ETA >= {eta / 60:.1f} min")
            self._bar.refresh()
        else:
            log.info(line)

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, study: optuna.Study) -> list:
        built = plan.build_ladders(study.get_trials(deepcopy=False), self.specs, self.settings, self.objective,
                                   self.tolerance)
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
        return []

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
