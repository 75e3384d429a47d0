"""Scale-out: several `ranksweep -m` workers on one study, on real shared storages.

PostgreSQL is a real server on loopback (tests/pgserver.py); the shared-filesystem
path uses Optuna's JournalFileStorage. No SQLite stand-in for multi-worker tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from helpers import run
from helpers.postgres import PgServer, bin_dir
from helpers.run import TINY_SWEEP, finish
from optuna.trial import TrialState

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bin_dir() is None, reason="needs Debian's postgresql (installed by .ci/run)")]

TINY = [*TINY_SWEEP, "logger=none", "hydra.sweeper.max_rank=64", "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=8", "hydra.sweeper.poll_s=1"]


def start(cwd: Path, cache: Path, *args: str) -> subprocess.Popen:
    return run.start(cwd, cache, "-m", *TINY, *args)


def jobs(study: optuna.Study) -> dict[tuple, list]:
    by: dict[tuple, list] = {}
    for t in study.get_trials():
        if "slot" not in t.user_attrs:  # being claimed (or its worker died mid-claim): no job yet
            continue
        # a job: its ladder, rank, seed and slot (a search trial's, or the budget check's longer run)
        by.setdefault((t.user_attrs["ladder"], t.user_attrs["rank"], t.user_attrs["seed"], t.user_attrs["slot"]),
                      []).append(t)
    return by


def curve(path: Path) -> list:
    doc = json.loads(path.read_text())
    return [(lad["key"], [(r["rank"], r["values"]) for r in lad["rungs"]], lad["stop_reason"],
             (lad["recommendation"] or {}).get("rank")) for lad in doc["ladders"]]


@pytest.fixture(scope="module")
def pg():
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache):
    """The reference: one worker, SQLite."""
    cwd = tmp_path_factory.mktemp("single")
    ((rc, _, err),) = finish([start(cwd, cache, "hydra.sweeper.study_name=ref")])
    assert rc == 0, err[-3000:]
    return curve(cwd / "outputs" / "sweeps" / "ref" / "sweep_summary.json")


def test_three_workers_on_postgres_train_each_rank_once(pg, tmp_path, cache, single):
    url = pg.create_db("three")
    procs = [start(tmp_path, cache, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=three")
             for _ in range(3)]
    results = finish(procs)
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    study = optuna.load_study(study_name="three", storage=url)
    for key, ts in jobs(study).items():
        finished = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 1, f"{key} ran {len(finished)} times"
    workers = {t.user_attrs["worker"] for t in study.get_trials()}
    assert len(workers) >= 2, "the work was shared"
    assert curve(tmp_path / "outputs" / "sweeps" / "three" / "sweep_summary.json") == single


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_killed_worker_trial_is_retried(pg, tmp_path, cache, single, kind):
    from ranksweep.storage import open_storage

    url = pg.create_db("killed") if kind == "postgresql" else f"journal://{tmp_path / 'study.log'}"
    storage = open_storage(url, heartbeat=False)
    args = (f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=killed")
    procs = [start(tmp_path, cache, *args) for _ in range(2)]
    victim = None
    deadline = time.time() + 600
    try:
        while victim is None and time.time() < deadline:
            time.sleep(0.5)
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
            except Exception:
                continue
            for t in trials:
                if t.state == TrialState.RUNNING and t.user_attrs.get("rank", 0) > 0 and t.intermediate_values:
                    victim = t
                    break
        assert victim is not None, "no trial reached mid-training"
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        (killed,) = [p for p in procs if p.pid == pid]
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        (survivor,) = [p for p in procs if p is not killed]
        ((rc, _, err),) = finish([survivor])
        assert rc == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    study = optuna.load_study(study_name="killed", storage=storage)
    key = (victim.user_attrs["ladder"], victim.user_attrs["rank"], victim.user_attrs["seed"], victim.user_attrs["slot"])
    ts = jobs(study)[key]
    assert ts[0].number == victim.number and ts[0].state == TrialState.FAIL
    retried = [t for t in ts[1:] if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(retried) == 1 and retried[0].params == victim.params
    assert curve(tmp_path / "outputs" / "sweeps" / "killed" / "sweep_summary.json") == single


# The real command, dying right after its first claim (as if killed there): the trial exists and names its
# job, and nothing was launched.
DIE_AFTER_CLAIM = """
import os, sys
from ranksweep.sweep.claim import Claimer
create = Claimer._create
def _create(self, *args, **kwargs):
    create(self, *args, **kwargs)
    os._exit(9)
Claimer._create = _create
from ranksweep.cli import run
sys.argv[0] = sys.argv.pop(1)
run()
"""


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_worker_killed_between_claim_and_launch(pg, tmp_path, cache, single, kind):
    """Its trial goes stale like a running one; the next worker runs the job instead of waiting on it."""
    from ranksweep.storage import open_storage

    url = pg.create_db("claimed") if kind == "postgresql" else f"journal://{tmp_path / 'study.log'}"
    args = ["-m", *TINY, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=claimed"]
    died = subprocess.run([run.PYTHON, "-c", DIE_AFTER_CLAIM, run.BIN, *args], cwd=tmp_path, env=run.env(cache),
                          capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr[-3000:]
    storage = open_storage(url, heartbeat=False)
    (orphan,) = optuna.load_study(study_name="claimed", storage=storage).get_trials()
    assert orphan.state == TrialState.RUNNING and orphan.user_attrs["ladder"] == "default"
    ((rc, _, err),) = finish([start(tmp_path, cache, *args[1 + len(TINY):])], timeout=300)
    assert rc == 0, err[-3000:]
    ts = jobs(optuna.load_study(study_name="claimed", storage=storage))[
        (orphan.user_attrs["ladder"], orphan.user_attrs["rank"], orphan.user_attrs["seed"], orphan.user_attrs["slot"])]
    assert ts[0].number == orphan.number and ts[0].state == TrialState.FAIL
    assert ts[0].user_attrs["fail_reason"] == f"worker {orphan.user_attrs['worker']} stopped (no heartbeat)"
    assert [t.state for t in ts[1:]] == [TrialState.COMPLETE]
    assert curve(tmp_path / "outputs" / "sweeps" / "claimed" / "sweep_summary.json") == single


def test_two_workers_on_a_journal_file(tmp_path, cache, single):
    url = f"journal://{tmp_path / 'shared' / 'study.log'}"
    results = finish([start(tmp_path, cache, f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=jr")
                      for _ in range(2)])
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    from ranksweep.storage import open_storage

    study = optuna.load_study(study_name="jr", storage=open_storage(url, heartbeat=False))
    for key, ts in jobs(study).items():
        assert len([t for t in ts if t.state == TrialState.COMPLETE or t.state == TrialState.PRUNED]) == 1, key
    assert curve(tmp_path / "outputs" / "sweeps" / "jr" / "sweep_summary.json") == single


@pytest.mark.parametrize("launcher, marker", [("submitit_local", "Submitit 'local'"), ("joblib", "Joblib.Parallel")])
def test_hydra_launchers_run_the_sweep(tmp_path, cache, single, launcher, marker):
    results = finish([start(tmp_path, cache, f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2",
                            "hydra.sweeper.study_name=sub")])
    (rc, out, err), = results
    assert rc == 0, err[-3000:]
    assert marker in out + err
    assert curve(tmp_path / "outputs" / "sweeps" / "sub" / "sweep_summary.json") == single


@pytest.mark.parametrize("make_url, key", [
    (lambda pg: f"postgresql://ranksweep:x@127.0.0.1:{pg.port + 1}/postgres", "hydra.sweeper.storage"),
    (lambda pg: pg.url(password="wrong-password"), "hydra.sweeper.storage"),
])
def test_bad_database_is_one_line(pg, tmp_path, cache, make_url, key):
    ((rc, _, err),) = finish([start(tmp_path, cache, f"hydra.sweeper.storage={make_url(pg)}")], timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("ranksweep: error:") and key in lines[0], err
    assert "wrong-password" not in err


def test_other_search_space_on_postgres_is_refused(pg, tmp_path, cache):
    url = pg.create_db("space")
    study = optuna.create_study(study_name="space", storage=url)
    study.set_user_attr("ranksweep_space", {"ladders": ["lora.targets=mlp"]})
    study.enqueue_trial({"x": 1})
    ((rc, _, err),) = finish([start(tmp_path, cache, f"hydra.sweeper.storage={url}",
                                    "hydra.sweeper.study_name=space")], timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "different search space" in lines[0], err
    assert len(optuna.load_study(study_name="space", storage=url).get_trials()) == 1
