"""The rank-doubling sweep: Optuna is the record, Hydra's launcher runs the jobs.

For every combination of the other sweep overrides (``lora.targets=attention,all_linear``) there
is one *ladder*: the untrained base is evaluated once, then ranks ``start_rank * factor**k`` are
trained until the stop rule (:mod:`ranksweep.sweep.rules`, by default the margin rule) fires. Each job
is one Optuna trial; the study holds its params (the axes, ``rank``, ``seed``), its objective, its
intermediate eval values and user attributes. Rerunning the same command resumes from the study.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Optional

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.distributions import CategoricalDistribution

from ranksweep.errors import ConfigError
from ranksweep.storage import check_readable, check_storage_file, open_storage
from ranksweep.sweep import identity, keys
from ranksweep.sweep import summary as summary_mod
from ranksweep.sweep.claim import Claim, Claimer
from ranksweep.sweep.heartbeat import heartbeat
from ranksweep.sweep.overrides import checkpoint_dir, job_overrides, parse
from ranksweep.sweep.plan import Item
from ranksweep.sweep.preflight import check_plan
from ranksweep.sweep.progress import Progress
from ranksweep.sweep.reader import spec_of
from ranksweep.sweep.record import record
from ranksweep.sweep.search import space as search_space
from ranksweep.sweep.settings import SweepSettings
from ranksweep.urls import conceal, mask_secrets, reveal

log = logging.getLogger("ranksweep.sweep")
# We drive heartbeats ourselves (around each launch), not through Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what happens


def create_or_resume_study(storage: Any, s: SweepSettings, space: dict, identities: dict[str, dict],
                           data: Optional[dict[str, Any]] = None) -> optuna.Study:
    """Create or load the study, refusing one that holds another sweep (other direction, search space,
    trial config, data content) or a damaged storage; record the settings (:meth:`SweepSettings.to_record`)
    for readers of the study."""
    name = s.study_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what happens (set per sweep:
    # something else in this process may have changed it since import)
    check_readable(storage, name, s.storage_url)  # a damaged storage is never written to
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=s.direction,
                                    load_if_exists=True)
    except Exception as exc:
        raise ConfigError(f"hydra.sweeper.storage: cannot create study {name!r}: "
                          f"{' '.join(str(exc).split())[:200]}") from exc
    if study.direction.name.lower() != s.direction:
        raise ConfigError(f"hydra.sweeper.study_name: study {name!r} exists with direction "
                          f"{study.direction.name.lower()}; use a new study_name")
    stored = study.user_attrs.get(keys.STUDY_SPACE)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ConfigError(f"hydra.sweeper.study_name: study {name!r} already holds trials "
                              "that ranksweep did not create; use a new study_name")
        study.set_user_attr(keys.STUDY_SPACE, space)
    elif (was := _spelled(stored)) != (now := _spelled(space)):
        diff = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        raise ConfigError(
            f"hydra.sweeper.study_name: study {name!r} was created with a different search space (differs in: "
            f"{', '.join(diff)}; stored {json.dumps({k: stored.get(k) for k in diff})}); "
            "rerun with the same overrides to resume, or pick a new study_name")
    identity.bind_study(study, identities, name, data)  # the same trial config and data as the study's first run
    # The settings, for readers of the study (report, SweepSettings.from_record); they may change between runs.
    study.set_user_attr(keys.STUDY_SETTINGS, s.to_record())
    return study


def _spelled(space: dict) -> dict:
    """A stored space with its search strings as Hydra reads them: spaces outside quotes do not count
    (``tag(log,interval(1e-4,1e-2))`` is ``tag(log, interval(1e-4, 1e-2))``)."""
    search = space.get("search")
    if not isinstance(search, dict):
        return space
    return {**space, "search": {k: re.sub(r"\s+", "", v) if isinstance(v, str) and not re.search("['\"]", v) else v
                                for k, v in search.items()}}


class RankSweep:
    """The sweep logic behind ``hydra/sweeper=ranksweep``: setup, then the claim-launch-record loop."""

    def __init__(self, settings: SweepSettings) -> None:
        self.s = settings
        self._fit_cache: dict[tuple[str, int], Optional[str]] = {}
        self.data_ids: dict[str, Any] = {}  # each ladder's DataIdentity (ranksweep.data.identity)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # -- the study -------------------------------------------------------------------------
    def _create_or_resume_study(self, space: dict, identities: dict[str, dict]) -> optuna.Study:
        self.storage = open_storage(self.s.storage_url, heartbeat=(self.s.heartbeat_interval, self.s.grace_period))
        return create_or_resume_study(self.storage, self.s, space, identities, self.data_ids)

    # -- jobs ------------------------------------------------------------------------------
    def _run_config(self, item: Item, values: Optional[dict] = None) -> Any:
        """The validated :class:`ranksweep.config.RunConfig` of the job ``item``, as its trial will see it."""
        from ranksweep.config import to_run_config

        ov = job_overrides(self.space, self.s, item, 0, "x", values=values)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, ov)
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return to_run_config(cfg)

    def _data_identities(self, ladders: Sequence[tuple[str, tuple[str, ...]]], searched: dict) -> dict[str, Any]:
        """Each ladder's data by content (:func:`ranksweep.data.identity.data_identity`): part of the study's
        identity, and what each job checks its data against. A missing file fails here, before anything
        is stored."""
        from ranksweep.data.identity import data_identity
        from ranksweep.sweep.preflight import probe_values

        probe = probe_values(searched)
        return {key: data_identity(self._run_config(Item(key, combo, self.s.start_rank, 0), probe).data)
                for key, combo in ladders}

    def _infeasible(self, item: Item) -> Optional[str]:
        """Why the job would not fit the device (memory estimate over the limit), or None; cached per
        (ladder, rank). The base evaluation builds the first rank's adapter: it is skipped when that rank
        does not fit (nothing in its ladder could run)."""
        if item.rank == 0:
            why = self._infeasible(Item(item.ladder, item.combo, self.s.start_rank, 0))
            return None if why is None else f"its adapter (the first rank, r={self.s.start_rank}) {why}"
        key = (item.ladder, item.rank)
        if key not in self._fit_cache:
            from ranksweep.memory import plan_memory, run_device

            run = self._run_config(item)
            mem = plan_memory(run, run_device(run))
            self._fit_cache[key] = None if mem.fits else (
                f"would not fit: {mem.describe()} (trainer.memory_limit_gb; `ranksweep estimate` shows the parts)")
        return self._fit_cache[key]

    def _slots(self) -> int:
        """Jobs this worker keeps in flight: ``n_jobs``, or 1 with Hydra's in-process launcher."""
        if self.s.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
            log.warning("hydra.sweeper.n_jobs=%d needs an out-of-process launcher (hydra/launcher=joblib, "
                        "submitit_local, submitit_slurm); running one job at a time", self.s.n_jobs)
            return 1
        return self.s.n_jobs

    def _launch(self, c: Claim) -> Any:
        """Run one job through Hydra's launcher while a heartbeat says its worker is alive."""
        beat = heartbeat(self.storage, c.trial._trial_id, self.s.heartbeat_interval)
        beat.start()
        try:
            ov = job_overrides(self.space, self.s, c.item, c.trial.number, c.subdir, c.parent, c.values,
                               checkpoint_dir(self.sweep_dir, c.item),
                               data_digest=self.data_ids[c.item.ladder].digest if c.item.ladder in self.data_ids
                               else None)
            (ret,) = self.launcher.launch([ov], initial_job_idx=c.trial.number)
        except Exception as exc:  # the launcher itself failed (lost job, unreadable result)
            ret = exc
        finally:
            beat.join()
        return ret

    def _tell(self, c: Claim, ret: Any) -> None:
        try:
            record(self.study, c.trial, ret)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker missed this worker's heartbeat for grace_period and marked the trial
            # failed; its (ladder, rank, seed) runs again. Raise grace_period if this repeats.
            log.warning("trial %d was marked failed by another worker (missed heartbeats); its result "
                        "is dropped and the job runs again", c.trial.number)
        trials, ladders = self.claimer.read()
        self.progress.show(trials, ladders, c.item.rank, c.item.ladder)

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, arguments: Sequence[str]) -> list:
        # A password from a config file or ${oc.env:...}: masked in every job's overrides from here on.
        self.s.storage = conceal(self.s.storage_url)
        identity.check_name("hydra.sweeper.study_name", self.s.study_name)  # it names the sweep folder
        self.space = space = parse(arguments, self.s.params)
        self.s.search = {**self.s.search, **dict(space.search)}  # a range on the command line is searched
        searched = search_space(self.s.search, space.keys + ["lora.r", "trainer.seed"])
        # Every ladder's jobs (its axis values, every searched value, the first and last rank) are checked
        # here, before anything is stored; each ladder's trial identity is composed at the probe values.
        idents = check_plan(self._run_config, space.ladders, self.s.search, searched, self.s.ranks)
        self.data_ids = self._data_identities(space.ladders, searched)  # what each ladder's files hold
        check_storage_file(reveal(self.s.storage_url))  # a file that is not Optuna's: refused before any write
        where = identity.storage_identity(self.s.storage_url)
        identity.open_folder(self.sweep_dir, where, self.s.study_name)  # another study's folder: refused
        self.study = self._create_or_resume_study(space.stored(self.s), idents)
        identity.bind_folder(self.sweep_dir, where, self.s.study_name)
        axes = {k: CategoricalDistribution(sorted({c.split("=", 1)[1] for c in vals})) for k, vals in space.axes}
        self.spec = spec_of(self.s, space.ladders)
        self.claimer = Claimer(self.study, self.storage, self.s, self.spec, axes, self.sweep_dir, self._infeasible,
                               searched)
        slots = self._slots()
        self.progress = Progress(self.s.study_name, self.s.seeds_per_rank, slots)
        log.info("study %r in %s: %d ladder(s) %s, ranks %s, %d job(s) at a time", self.s.study_name,
                 mask_secrets(self.s.storage_url), len(space.ladders), ", ".join(k for k, _ in space.ladders),
                 self.s.ranks, slots)
        inflight: dict[Future, Claim] = {}
        pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ranksweep-job") if slots > 1 else None
        try:
            while True:
                claimed, elsewhere = self.claimer.claim(slots - len(inflight)) if slots > len(inflight) else ([], False)
                for c in claimed:
                    if pool is None:
                        self._tell(c, self._launch(c))
                    else:
                        inflight[pool.submit(self._launch, c)] = c
                if inflight:  # no barrier: whichever job ends first frees its slot
                    done, _ = wait(list(inflight), timeout=self.s.poll_s, return_when=FIRST_COMPLETED)
                    for fut in done:
                        self._tell(inflight.pop(fut), fut.result())
                    continue
                if claimed or self.claimer.skipped:  # a skipped rank ends its ladder: plan again at once
                    continue
                if not elsewhere:
                    break
                time.sleep(self.s.poll_s)  # another worker holds a job this ladder needs
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        self._finish()
        return []

    def _finish(self) -> None:
        from ranksweep.tracking import log_sweep_summary

        _, ladders = self.claimer.read()
        paths = summary_mod.write_outputs(self.sweep_dir, ladders, self.s)
        print(summary_mod.format_table(ladders), flush=True)
        best = self.sweep_dir / "best"
        print(f"summary: {paths.summary}\nplot:    {paths.plot}" + (f"\nbest:    {best}" if best.is_dir() else "")
              + f"\nstudy:   {self.s.study_name} in {mask_secrets(self.s.storage_url)}", flush=True)
        self.summary_run_dir = log_sweep_summary(self.config.get("logger") or {}, ladders, self.s, self.sweep_dir,
                                                 paths.plot)
