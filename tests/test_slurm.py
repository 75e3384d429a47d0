"""Sweeps on a live single-node SLURM cluster through hydra-submitit-launcher (``hydra/launcher=slurm_cpu``).

The cluster is real (tests/helpers/slurm.py: munged, MariaDB + slurmdbd, slurmctld, slurmd under a
temp dir); jobs are submitted with sbatch, cancelled with scancel, stopped by SLURM's time limit. Where it
cannot run (not root, packages missing, a daemon does not start) these tests skip and say why.
The study is a journal file every job shares. The reference is the same sweep run locally once.

The classifier of launcher failures (:mod:`ranksweep.launchers`) is unit-tested at the end on
submitit's own exception types and messages, without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_SWEEP, compose
from helpers.slurm import SlurmCluster, SlurmUnavailable, unavailable

BIN = str(Path(sys.executable).parent / "ranksweep")
TINY = [
    *TINY_SWEEP, "logger=none", "hydra.sweeper.min_gain=0.0",
    # No parent-rank pruning: it compares with the parent's progress at that moment, which depends
    # on how the scheduler interleaved the jobs; without it every curve is the local run's.
    "hydra.sweeper.pruner=none",
    "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=8", "hydra.sweeper.poll_s=1",
]
SLURM = ["hydra/launcher=slurm_cpu", "hydra.sweeper.n_jobs=2"]
slow = pytest.mark.slow


def _no_launcher() -> str | None:
    import importlib.util

    if importlib.util.find_spec("submitit") is None or importlib.util.find_spec(
            "hydra_plugins.hydra_submitit_launcher") is None:
        return "hydra-submitit-launcher is not installed (pip install -e '.[slurm]'; make setup installs it)"
    return None


needs_launcher = pytest.mark.skipif(_no_launcher() is not None, reason=str(_no_launcher()))


# -- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    reason = _no_launcher() or unavailable()
    if reason:
        pytest.skip(reason)
    try:
        c = SlurmCluster().start()
    except SlurmUnavailable as exc:
        pytest.skip(f"the SLURM cluster did not start here: {exc}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _env(cluster: SlurmCluster | None, cache: Path) -> dict:
    # What the jobs must inherit from the submitting shell (sbatch exports it).
    env = dict(os.environ, RANKSWEEP_CACHE=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    return cluster.env(env) if cluster is not None else env


def start(cwd: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([BIN, "-m", *TINY, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(p: subprocess.Popen, timeout: int = 400) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"the sweep did not finish in {timeout}s:\n{out[-3000:]}\n{err[-3000:]}")
    return p.returncode, out, err


def journal(path: Path) -> str:
    return f"journal://{path}"


def load(url: str, name: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(url[len("journal://"):]))
    return optuna.load_study(study_name=name, storage=storage)


def jobs(study) -> dict[tuple, list]:
    by: dict[tuple, list] = {}
    for t in study.get_trials():
        if "slot" not in t.user_attrs:  # being claimed (or its worker died mid-claim): no job yet
            continue
        # a job: its ladder, rank, seed and slot (a search trial's, or the budget check's longer run)
        by.setdefault((t.user_attrs["ladder"], t.user_attrs["rank"], t.user_attrs["seed"], t.user_attrs["slot"]),
                      []).append(t)
    return by


def finished(ts: list) -> list:
    from optuna.trial import TrialState

    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def curve(path: Path) -> list:
    doc = json.loads(path.read_text())
    return [(lad["key"], [(r["rank"], r["values"]) for r in lad["rungs"]], lad["stop_reason"],
             (lad["recommendation"] or {}).get("rank")) for lad in doc["ladders"]]


def submitted(sweep_dir: Path) -> dict[str, int]:
    """SLURM job id -> trial number, from submitit's pickled jobs (their overrides name the trial)."""
    out = {}
    for pkl in (sweep_dir / ".submitit").glob("*/*_submitted.pkl"):
        m = re.search(rb"trial\.trial_number=(\d+)", pkl.read_bytes())
        if m:
            out[pkl.parent.name] = int(m.group(1))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache):
    """The reference: the same sweep, in one local process."""
    cwd = tmp_path_factory.mktemp("single")
    rc, _, err = finish(start(cwd, _env(None, cache), "hydra.sweeper.study_name=ref"))
    assert rc == 0, err[-3000:]
    return curve(cwd / "outputs" / "sweeps" / "ref" / "sweep_summary.json")


# -- sweeps on the cluster ---------------------------------------------------------------------
@slow
def test_sweep_runs_on_slurm(cluster, tmp_path, cache, single):
    url = journal(tmp_path / "shared" / "study.log")
    t0 = time.time()
    rc, out, err = finish(start(tmp_path, _env(cluster, cache), *SLURM, f"hydra.sweeper.storage={url}",
                                "hydra.sweeper.study_name=onslurm"))
    assert rc == 0, err[-3000:]
    assert "Submitit 'slurm'" in out + err
    sweep_dir = tmp_path / "outputs" / "sweeps" / "onslurm"
    assert curve(sweep_dir / "sweep_summary.json") == single

    study = load(url, "onslurm")
    by = jobs(study)
    assert {rank for _, rank, _, _ in by} == {0, 8, 16, 32}
    for key, ts in by.items():
        assert len(ts) == 1 and len(finished(ts)) == 1, f"{key}: {[(t.number, t.state.name) for t in ts]}"

    # Each trial was one SLURM job, accounted COMPLETED; its submitit files sit in the sweep dir.
    ids = submitted(sweep_dir)
    assert sorted(ids.values()) == sorted(t.number for ts in by.values() for t in ts)
    for job_id, number in ids.items():
        assert cluster.sacct_state(job_id) == "COMPLETED", (job_id, cluster.logs())
        log = (sweep_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
        (trial,) = [t for ts in by.values() for t in ts if t.number == number]
        assert trial.user_attrs["output_dir"] in log and "Job completed successfully" in log
        # The job inherited the submitting shell's environment and python.
        script = (sweep_dir / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
        assert sys.executable in script and "--cpus-per-task=1" in script and "gpus" not in script
        resolved = (Path(trial.user_attrs["output_dir"]) / "config.yaml").read_text()
        assert f"cache_dir: {cache}" in resolved
    print(f"sweep on SLURM: {time.time() - t0:.0f}s, {len(ids)} jobs")


@slow
def test_cancelled_job_is_recorded_and_retried(cluster, tmp_path, cache, single):
    url = journal(tmp_path / "study.log")
    sweep_dir = tmp_path / "outputs" / "sweeps" / "cancel"
    p = start(tmp_path, _env(cluster, cache), *SLURM, f"hydra.sweeper.storage={url}",
              "hydra.sweeper.study_name=cancel")
    victim = None
    try:
        deadline = time.time() + 180
        while victim is None and time.time() < deadline and p.poll() is None:
            time.sleep(0.3)
            running = {j for j, st in cluster.jobs().items() if st == "RUNNING"}
            for job_id, number in submitted(sweep_dir).items():
                if job_id in running and number > 0:  # trial 0 is the base; cancel a training rank
                    cluster.cmd("scancel", job_id)
                    victim = (job_id, number)
                    break
        assert victim is not None, "no training job was seen running"
        rc, out, err = finish(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert rc == 0, err[-3000:]
    job_id, number = victim
    assert cluster.sacct_state(job_id).startswith("CANCELLED"), cluster.sacct_state(job_id)

    from optuna.trial import TrialState

    study = load(url, "cancel")
    t = study.trials[number]
    assert t.state == TrialState.FAIL
    assert t.user_attrs["failure_kind"] == "cancelled"
    assert f"SLURM job {job_id} CANCELLED" in t.user_attrs["fail_reason"]
    key = (t.user_attrs["ladder"], t.user_attrs["rank"], t.user_attrs["seed"], t.user_attrs["slot"])
    ts = jobs(study)[key]
    assert [x.number for x in ts][0] == number and len(ts) == 2, [(x.number, x.state.name) for x in ts]
    (again,) = finished(ts)
    assert again.params == t.params
    for other, others in jobs(study).items():
        assert len(finished(others)) == 1, other
    assert curve(sweep_dir / "sweep_summary.json") == single


@slow
def test_job_past_its_time_limit_is_a_timeout(cluster, tmp_path, cache):
    # r=8 alone, trained far longer than timeout_min=1 allows. submitit asks SLURM for its signal
    # signal_delay_s before the limit; the job then stops itself (it may not be requeued).
    url = journal(tmp_path / "study.log")
    rc, out, err = finish(start(tmp_path, _env(cluster, cache), *SLURM, f"hydra.sweeper.storage={url}",
                                "hydra.sweeper.study_name=slow", "hydra.sweeper.max_rank=8",
                                "trainer.max_steps=100000", "hydra.launcher.timeout_min=1",
                                "hydra.launcher.signal_delay_s=5",
                                "hydra.sweeper.n_jobs=1"),  # r=8's noise seeds wait for seed 0, so never run
                 timeout=300)
    assert rc == 0, err[-3000:]
    from optuna.trial import TrialState

    by = jobs(load(url, "slow"))
    assert [t.state for t in by[("default", 0, 0, 0)]] == [TrialState.COMPLETE]
    (t,) = by[("default", 8, 0, 0)]  # not retried
    assert t.state == TrialState.FAIL and t.user_attrs["failure_kind"] == "timeout", t.user_attrs
    assert "time limit" in t.user_attrs["fail_reason"] and "timeout_min" in t.user_attrs["fail_reason"]
    assert "failed (timeout)" in out + err and "no rank completed" in out


@slow
def test_killed_sweeper_resumes_without_retraining(cluster, tmp_path, cache, single):
    from optuna.trial import TrialState

    url = journal(tmp_path / "study.log")
    args = (*SLURM, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=resume")
    p = start(tmp_path, _env(cluster, cache), *args)
    done_before: dict[tuple, int] = {}
    try:
        deadline = time.time() + 180
        while not done_before and time.time() < deadline and p.poll() is None:
            time.sleep(0.3)
            try:
                study = load(url, "resume")
            except Exception:  # not created yet
                continue
            if any(t.state == TrialState.COMPLETE and t.user_attrs.get("rank", 0) > 0 for t in study.trials):
                os.killpg(p.pid, signal.SIGKILL)  # the sweeper only: its SLURM jobs go on
                p.wait()
                done_before = {k: finished(ts)[0].number for k, ts in jobs(load(url, "resume")).items()
                               if finished(ts)}
        assert done_before, "no rank finished before the deadline"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    rc, out, err = finish(start(tmp_path, _env(cluster, cache), *args))
    assert rc == 0, err[-3000:]
    by = jobs(load(url, "resume"))
    for key, number in done_before.items():  # nothing finished was run again
        assert [t.number for t in by[key]] == [number], (key, [(t.number, t.state.name) for t in by[key]])
    for key, ts in by.items():
        assert len(finished(ts)) == 1, (key, [(t.number, t.state.name) for t in ts])
    assert curve(tmp_path / "outputs" / "sweeps" / "resume" / "sweep_summary.json") == single


# -- the classifier, on submitit's exceptions ----------------------------------------------------
def _no_output(job: str, state: str):
    utils = pytest.importorskip("submitit.core.utils")

    # The message submitit's Job._get_outcome_and_result builds when a job left no result.
    return utils.UncompletedJobError("\n".join([f"Job {job} (task: 0) with path /s/.submitit/{job}/{job}_0_result.pkl",
                                          f"has not produced any output (state: {state})",
                                          "Error stream produced:", "-" * 40, "slurmstepd: error: ..."]))


@pytest.mark.parametrize("state, kind, retry", [
    ("CANCELLED by 0", "cancelled", True), ("NODE_FAIL", "node_fail", True), ("PREEMPTED", "preempted", True),
    ("BOOT_FAIL", "node_fail", True), ("TIMEOUT", "timeout", False), ("DEADLINE", "timeout", False),
])
def test_scheduler_states_are_classified(state, kind, retry):
    from ranksweep.launchers import RETRY_KINDS, describe_job_failure

    got = describe_job_failure(_no_output("42", state))
    assert got is not None and got[0] == kind and got[2] is retry and (kind in RETRY_KINDS) is retry
    assert got[1].startswith(f"SLURM job 42 {state}")


@needs_launcher
def test_other_failures_keep_the_sweepers_handling():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from ranksweep.errors import TrialFailed
    from ranksweep.launchers import describe_job_failure

    assert describe_job_failure(_no_output("7", "OUT_OF_MEMORY")) is None
    assert describe_job_failure(_no_output("7", "FAILED")) is None
    assert describe_job_failure(RuntimeError("(state: CANCELLED) but not submitit's")) is None
    assert describe_job_failure(TrialFailed("non-finite loss", kind="nan")) is None
    assert describe_job_failure(FailedJobError("Job (task=0) failed during processing with trace:\nValueError")) is None
    # submitit's time-out signal, raised inside the job, or in its trace when raised outside the task.
    for exc in (UncompletedJobError("Job not requeued because: timed-out too many times."),
                FailedJobError("Job (task=0) failed during processing with trace:\n----\nsubmitit.core.utils."
                               "UncompletedJobError: Job not requeued because: timed-out and not checkpointable.")):
        kind, reason, retry = describe_job_failure(exc)
        assert (kind, retry) == ("timeout", False) and "timed-out" in reason
    wrapped = RuntimeError("launcher failed")
    wrapped.__cause__ = _no_output("9", "CANCELLED by 0")
    assert describe_job_failure(wrapped)[0] == "cancelled"


def test_retries_are_capped():
    """A job the scheduler takes away is run again, but not forever."""
    from ranksweep.launchers import MAX_RETRIES

    try:
        from optuna.trial import TrialState

        from ranksweep.sweep.reader import job_status
        from ranksweep.sweep.results import JobStatus, Trial
    except ImportError:  # pragma: no cover - the sweep package is being restructured
        pytest.skip("ranksweep.sweep.reader.job_status moved")

    def failed(n: int, kind: str | None) -> Trial:
        return Trial(number=n, ladder="default", rank=8, seed=0, state=TrialState.FAIL,
                     attrs={"failure_kind": kind} if kind else {})

    assert job_status([failed(0, "cancelled")])[0] == JobStatus.TODO
    assert job_status([failed(0, None)])[0] == JobStatus.TODO  # a dead worker's trial, as before
    assert job_status([failed(0, "timeout")])[0] == JobStatus.FAILED
    lost = [failed(i, "preempted") for i in range(MAX_RETRIES + 1)]
    assert job_status(lost[:-1])[0] == JobStatus.TODO
    status, last = job_status(lost)
    assert status == JobStatus.FAILED and last.number == MAX_RETRIES


@needs_launcher
def test_cpu_preset_asks_for_no_gpu_and_writes_beside_the_trials():
    from omegaconf import OmegaConf

    cpu = OmegaConf.to_container(compose("hydra/launcher=slurm_cpu", return_hydra_config=True).hydra.launcher,
                                 resolve=False)
    assert cpu["_target_"].endswith("SlurmLauncher")
    assert cpu["gpus_per_node"] is None and cpu["gpus_per_task"] is None and cpu["gres"] is None
    assert cpu["cpus_per_task"] == 1 and cpu["mem_gb"] <= 2 and cpu["timeout_min"] <= 10
    assert cpu["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert "export OMP_NUM_THREADS=1" in cpu["setup"]
    gpu = compose("hydra/launcher=slurm_gpu", return_hydra_config=True).hydra.launcher
    assert gpu.gpus_per_node == 1 and gpu.cpus_per_task == 8  # the documented GPU mapping stays
