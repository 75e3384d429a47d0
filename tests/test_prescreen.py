"""The nested-rank prescreen (hydra.sweeper.prescreen=nested) through the real sweeper, with the synthetic app.

The synthetic objective (tests/helpers/synthetic_app.py, SYN_C=0: the learning rate does not matter): the
capacity curve gains 0.05 per doubling up to SYN_TRUE_RANK and is flat after it; the prescreen job's prefix
curve has the same shape with its knee at SYN_PRESCREEN_RANK. A right prescreen is confirmed by three
separately trained ranks; a wrong one is contradicted, and the ladder goes on as it would without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.run import TINY_SWEEP, ranksweep

from ranksweep.sweep.prescreen import centers, kendall_tau, narrow
from ranksweep.sweep.search import distribution

TESTS = Path(__file__).resolve().parent
BASE = ["model=tiny_llama", "trainer=tiny", "trainer.max_steps=30", "trainer.eval_every=10", "logger=none",
        "hydra.sweeper.start_rank=1", "hydra.sweeper.max_rank=64", "hydra.sweeper.margin=0.01",
        "hydra.sweeper.margin_type=absolute", "hydra.sweeper.prescreen=nested", "hydra.sweeper.budget_check=0",
        "hydra.sweeper.study_name=p"]


def run(cwd: Path, true_rank: int, prescreen_rank: int, *args: str, **env: str) -> dict:
    e = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1", SYN_C="0", SYN_TRUE_RANK=str(true_rank),
             SYN_PRESCREEN_RANK=str(prescreen_rank), **env)
    e.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "helpers.synthetic_app", "-m", *BASE, *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (lad,) = json.loads((cwd / "outputs" / "sweeps" / "p" / "sweep_summary.json").read_text())["ladders"]
    lad["stdout"] = proc.stdout
    return lad


def trained(cwd: Path) -> dict[str, list[int]]:
    """Each role's ranks, one entry per trial, from the study."""
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{cwd / 'outputs' / 'ranksweep.db'}")
    out: dict[str, list[int]] = {}
    for t in study.get_trials():
        out.setdefault(t.user_attrs["role"], []).append(int(t.user_attrs["rank"]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow
def test_a_right_prescreen_is_confirmed_by_three_ranks_and_its_steps_are_counted(tmp_path):
    lad = run(tmp_path, 8, 8)
    pre = lad["prescreen"]
    assert pre["candidate"] == 8 and pre["confirm"] == [4, 8, 16] and pre["verdict"] == "confirmed", pre
    assert lad["recommendation"]["rank"] == 8
    assert sorted(pre["values"], key=int) == ["1", "2", "4", "8", "16", "32", "64"]
    # the answer rests on separately trained ranks only: r=1, 2 never ran; the curve starts at r=4
    assert [r["rank"] for r in lad["rungs"]][:3] == [4, 8, 16]
    roles = trained(tmp_path)
    assert roles["prescreen"] == [64]
    assert not {1, 2} & set(roles.get("rung", []) + roles.get("search", []))
    assert roles["rung"].count(4) == 3  # its seed and the 2 noise seeds run at the first confirmation
    # its steps are counted: the prescreen's 30 and every other trained trial's
    cost = lad["cost"]
    assert cost["prescreen_steps"] == 30
    assert cost["steps"] == 30 * (len(roles["rung"]) + len(roles.get("search", [])) + 1)
    assert cost["trials"] == len(roles["rung"]) + len(roles.get("search", [])) + 1
    agree = pre["agreement"]
    assert agree["ranks"][:3] == [4, 8, 16] and agree["verdicts_compared"] >= 2
    assert agree["verdicts_same"] == agree["verdicts_compared"]
    assert all(abs(g) < 0.01 for g in agree["gap"].values()), agree
    assert "prescreen" in lad["stdout"] and "cost" in lad["stdout"]


@pytest.mark.slow
def test_a_prescreen_that_places_the_knee_too_low_is_contradicted_and_the_ladder_goes_on(tmp_path):
    lad = run(tmp_path, 32, 4)
    pre = lad["prescreen"]
    assert pre["candidate"] == 4 and pre["confirm"] == [2, 4, 8], pre
    assert pre["verdict"] == "contradicted" and "went on" in pre["fallback"], pre
    assert lad["recommendation"]["rank"] == 32  # the separately trained ranks, not the prefixes
    assert 1 not in trained(tmp_path).get("rung", [])


@pytest.mark.slow
def test_a_prescreen_that_places_the_knee_too_high_falls_back_to_the_ladder_from_its_first_rank(tmp_path):
    lad = run(tmp_path, 2, 16)
    pre = lad["prescreen"]
    assert pre["candidate"] == 16 and pre["confirm"] == [8, 16, 32], pre
    assert pre["verdict"] == "contradicted" and "went down to r=1" in pre["fallback"], pre
    assert lad["recommendation"]["rank"] == 2
    assert 1 in trained(tmp_path)["rung"]


@pytest.mark.slow
def test_a_failed_prescreen_runs_every_rank(tmp_path):
    lad = run(tmp_path, 4, 4, SYN_PRESCREEN_FAIL="1")
    pre = lad["prescreen"]
    assert pre["verdict"] == "failed" and "every rank runs" in pre["fallback"], pre
    assert lad["recommendation"]["rank"] == 4
    assert [r["rank"] for r in lad["rungs"]][0] == 1


def test_the_confirmations_search_narrowly_around_the_prescreens_values():
    dists = {"trainer.lr": distribution("trainer.lr", "tag(log, interval(1e-4, 1e-2))"),
             "lora.dropout": distribution("lora.dropout", "choice(0.0, 0.1)"),
             "trainer.warmup": distribution("trainer.warmup", "interval(0.0, 0.8)")}
    mid = centers(dists)
    assert mid == {"trainer.lr": pytest.approx(1e-3), "lora.dropout": 0.0, "trainer.warmup": pytest.approx(0.4)}
    cut = narrow(dists, {"trainer.lr": 8e-3, "lora.dropout": 0.1, "trainer.warmup": 0.05})
    assert (cut["trainer.lr"].low, cut["trainer.lr"].high) == (pytest.approx(4e-3), pytest.approx(1e-2))
    assert cut["trainer.lr"].log
    assert (cut["trainer.warmup"].low, cut["trainer.warmup"].high) == (0.0, pytest.approx(0.15))
    assert cut["lora.dropout"] == dists["lora.dropout"]  # a study holds one set of choices per name


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [2, 4, 8]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1], [1, 2]) is None


@pytest.mark.slow
def test_a_real_nested_prescreen_on_a_tiny_model(tmp_path):
    """The real command: one nested-rank QLoRA trial at r=32 read at r=8, 16 and 32, its curve in the summary,
    its own W&B run (offline) and its adapter a plain rank-32 peft adapter; the answer from confirmations."""
    proc = ranksweep(tmp_path, "-m", *TINY_SWEEP, "hydra.sweeper.study_name=q", "hydra.sweeper.prescreen=nested",
                     "hydra.sweeper.noise_seeds=1", cache=tmp_path / "cache", WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "outputs" / "sweeps" / "q"
    (lad,) = json.loads((folder / "sweep_summary.json").read_text())["ladders"]
    pre = lad["prescreen"]
    assert sorted(map(int, pre["values"])) == [8, 16, 32] and pre["steps"] == 12, pre
    assert pre["candidate"] in (8, 16, 32) and pre["verdict"] in ("confirmed", "contradicted"), pre
    assert set(pre["confirm"]) <= {8, 16, 32} and pre["candidate"] in pre["confirm"]
    assert lad["recommendation"]["rank"] in [r["rank"] for r in lad["rungs"]]  # a separately trained rank
    assert lad["cost"]["prescreen_steps"] == 12 and lad["cost"]["steps"] >= 12 * (1 + len(lad["rungs"]))
    (run,) = folder.glob("trial-*-r32-nested")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 32 and not config.get("rank_pattern")
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(map(int, metrics["prescreen"]["prefixes"])) == [8, 16, 32]
    assert sum(metrics["prescreen"]["drawn"].values()) == 12
    assert "prescreen: nested r=32" in proc.stdout and "cost:" in proc.stdout
