"""The trial-speed benchmark runs end to end on the tiny model and prints ratios (its numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_trial_speed_bench_runs_on_cpu(tmp_path, rs_cache):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "trial_speed.py"), "cpu", "--cases", "tiny-full",
                           "--md", str(md), "--json", str(js)], capture_output=True, text=True, timeout=600,
                          env=subprocess_env(RANKSWEEP_CACHE=str(rs_cache)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(js.read_text())
    timed = [r for r in runs if r["rep"] >= 0]
    assert [r["variant"] for r in timed] == ["baseline", "ranksweep", "ranksweep:plain"]
    assert all("error" not in r and r["tok_s"] > 0 for r in runs), runs
    assert all(r["tensor_peak_gb"] > 0 for r in runs if r["rep"] < 0), "one memory run per variant"
    ranksweep = timed[1]
    assert ranksweep["estimated_gb"] > 0 and ranksweep["overhead_share"] < 1
    table = md.read_text()
    assert "| tiny-full | baseline |" in table and "1.00x" in table and "estimate vs measured" in table


def test_rank_method_bench_runs(tmp_path, rs_cache):
    """bench/rank_method.py end to end on a shrunk grid (its figures are in bench/RESULTS.md, not asserted)."""
    md, js = tmp_path / "rank.md", tmp_path / "rank.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rank_method.py"), "--ranks", "1", "2", "--lrs", "5e-3",
                           "1e-2", "--steps", "30", "--eval-every", "10", "--budget", "2", "--md", str(md), "--json",
                           str(js)], capture_output=True, text=True, timeout=900,
                          env=subprocess_env(RANKSWEEP_CACHE=str(rs_cache)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(js.read_text())
    assert len(res["grid"]["rows"]) == 4 and res["grid"]["steps"] == 4 * 30
    assert 0 < res["sweep"]["steps"] and res["sweep"]["rank"] in (1, 2)
    assert "share of the grid's steps" in md.read_text()


def test_rank_recovery_quick_runs(tmp_path, rs_cache):
    """bench/rank_recovery.py --quick (3 tasks, 1 seed, the default ladder) end to end, shrunk to 40 steps a trial
    so that it fits a test; its full-size figures are in bench/RESULTS.md."""
    md, js = tmp_path / "recovery.md", tmp_path / "recovery.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rank_recovery.py"), "--quick", "--steps", "40",
                           "--work", str(tmp_path / "work"), "--md", str(md), "--json", str(js)], capture_output=True,
                          text=True, timeout=1500, env=subprocess_env(RANKSWEEP_CACHE=str(rs_cache)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(js.read_text())["results"]
    assert [(r["task"], r["method"]) for r in res] == [("k2", "ladder"), ("null", "ladder"), ("saturated", "ladder")]
    assert all(not r["error"] and r["rank"] in (1, 2, 4, 8, 16, 32) and r["steps"] > 0 for r in res), res
    table = md.read_text()
    assert "| ladder | " in table and "| k2 | 0 | 2 | ladder | r=" in table and "--quick" in table
