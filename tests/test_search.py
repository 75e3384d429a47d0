"""A learning rate per rank, driven by Optuna, through the real sweeper with a cheap task function.

The synthetic objective (tests/helpers/synthetic_app.py): the true capacity curve gains 0.05 per
doubling up to r=32 and is flat after it; training away from a rank's best learning rate costs
0.2 * log10(lr / best)**2, and the best learning rate halves with every doubling (1e-3 at r=8).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
BASE = ["model=tiny_llama", "trainer=tiny", "trainer.max_steps=30", "trainer.eval_every=5", "logger=none",
        "hydra.sweeper.max_rank=256", "hydra.sweeper.margin=0.01", "hydra.sweeper.margin_type=absolute"]
SEARCH = ['+hydra.sweeper.search={trainer.lr: "tag(log, interval(3e-5, 3e-3))"}', "hydra.sweeper.search_budget=10"]


def synthetic(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "helpers.synthetic_app", "-m", *BASE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def ladder(cwd: Path, study: str) -> dict:
    (lad,) = json.loads((cwd / "outputs" / "sweeps" / study / "sweep_summary.json").read_text())["ladders"]
    return lad


def best_lr(r: int) -> float:
    return 1e-3 * 8 / r


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("searched")
    proc = synthetic(cwd, "hydra.sweeper.study_name=s", *SEARCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def test_one_learning_rate_picks_the_wrong_rank(tmp_path):
    proc = synthetic(tmp_path, "hydra.sweeper.study_name=f", "trainer.lr=1e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lad = ladder(tmp_path, "f")
    assert lad["recommendation"]["rank"] < 32, lad["recommendation"]  # the true rank is 32
    assert all(r["lrs"] == [1e-3] for r in lad["rungs"] if r["lrs"])


def test_search_recovers_each_ranks_learning_rate_and_the_true_rank(searched):
    lad = ladder(searched, "s")
    assert lad["recommendation"]["rank"] == 32, lad["recommendation"]
    assert [r["rank"] for r in lad["rungs"]][:3] == [8, 16, 32]
    for r in lad["rungs"]:
        if r["best_lr"] is not None:
            off = abs(math.log10(r["best_lr"] / best_lr(r["rank"])))
            assert off < 0.3, (r["rank"], r["best_lr"])
            assert len(r["lrs"]) == 10  # the budget: ten values tried per rank
            assert r["best_params"] == {"trainer.lr": r["best_lr"]}


def test_a_rung_costs_well_under_its_budget_and_pruned_trials_stay_out(searched):
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{searched / 'outputs' / 'ranksweep.db'}")
    lad = ladder(searched, "s")
    values = {r["rank"]: r for r in lad["rungs"]}
    by_rank: dict[int, list] = {}
    for t in study.get_trials():
        if t.user_attrs.get("role") == "search":
            by_rank.setdefault(t.user_attrs["rank"], []).append(t)
    for rank, ts in by_rank.items():
        steps = sum(max(t.intermediate_values or {0: 0}) for t in ts)
        assert steps <= 0.6 * 10 * 30, (rank, steps)  # successive halving: well under 10 full trials
        pruned = [t for t in ts if t.state == optuna.trial.TrialState.PRUNED]
        assert pruned and all(t.user_attrs.get("pruned_by") in ("rung", "parent", "cancelled") for t in pruned)
        if rank in values and values[rank]["values"]:
            complete = [t.value for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
            # seed 0's value is its best search trial (the noise seeds retrain that trial's values)
            seed0 = dict(zip(values[rank]["seeds"], values[rank]["values"]))[0]
            assert seed0 == pytest.approx(min(complete))
    # Every rank's first trial starts from the previous rank's best value (warm start).
    firsts = {t.user_attrs["rank"]: t for t in study.get_trials() if t.user_attrs.get("slot") == 0
              and t.user_attrs.get("role") == "search"}
    assert firsts[16].params["trainer.lr"] == pytest.approx(values[8]["best_lr"])


def test_a_best_learning_rate_at_the_edge_is_flagged(tmp_path):
    # The range given on the command line, as hydra-optuna-sweeper takes it: an interval is searched.
    proc = synthetic(tmp_path, "hydra.sweeper.study_name=e", "hydra.sweeper.max_rank=32",
                     "hydra.sweeper.search_budget=4", "trainer.lr=tag(log, interval(4e-4, 4e-3))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rungs = {r["rank"]: r for r in ladder(tmp_path, "e")["rungs"]}
    assert rungs[32]["lr_at_edge"] == "low", rungs[32]  # its best, 2.5e-4, lies below the range
    assert "edge" in proc.stdout
    assert all(4e-4 <= lr <= 4e-3 for r in rungs.values() for lr in r["lrs"] or []) and len(rungs[32]["lrs"]) > 1


@pytest.mark.parametrize("search, key", [
    ('+hydra.sweeper.search={trainer.lr: "0.1"}', "hydra.sweeper.search.trainer.lr"),
    ('+hydra.sweeper.search={trainer.lr: "tag(log, interval(0, 1))"}', "hydra.sweeper.search.trainer.lr"),
    ('+hydra.sweeper.search={trainer.learning_rate: "interval(1e-4, 1e-3)"}', "trainer.learning_rate"),
    ('+hydra.sweeper.search={lora.r: "choice(8, 16)"}', "hydra.sweeper.search.lora.r"),
    # One key at a time, as people type it (ranksweep gathers them for Hydra), quoted or not:
    ("hydra.sweeper.search.trainer.lr=0.1", "hydra.sweeper.search.trainer.lr"),
    ("hydra.sweeper.search.trainer.lr='interval(1e-2, 1e-4)'", "hydra.sweeper.search.trainer.lr"),
    ("trainer.lr=tag(log, interval(0, 1e-3))", "hydra.sweeper.search.trainer.lr"),
])
def test_bad_search_is_one_line(tmp_path, search, key):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "ranksweep"), "-m", *BASE, "hydra.sweeper.study_name=b",
                           search], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and key in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs" / "ranksweep.db").exists()
