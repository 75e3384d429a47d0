"""Running the real ``ranksweep`` command in a subprocess, with the overrides that make it tiny."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from helpers import PYTHON, subprocess_env

BIN = str(Path(PYTHON).parent / "ranksweep")

# A tiny single run: small data, few generated examples, no tracker.
TINY_RUN = ("model=tiny_llama", "trainer=tiny", "data.max_examples=200", "data.eval_size=20",
            "data.metric_examples=8", "logger=none")
# A tiny sweep: r = 8, 16, 32 on the tiny Llama, 12 steps a trial (a few seconds each).
TINY_SWEEP = ("model=tiny_llama", "trainer=tiny", "trainer.max_steps=12", "trainer.eval_every=4",
              "data.max_examples=160", "data.eval_size=16", "data.metric_examples=4", "hydra.sweeper.max_rank=32")


def env(cache: Optional[Path] = None, **extra: str) -> dict[str, str]:
    """:func:`helpers.subprocess_env` with offline W&B and, when given, the model cache."""
    e = subprocess_env(WANDB_MODE="offline")
    if cache is not None:
        e["RANKSWEEP_CACHE"] = str(cache)
    e.update(extra)
    return e


def ranksweep(cwd: Path, *args: str, cache: Optional[Path] = None, timeout: int = 600,
              **extra: str) -> subprocess.CompletedProcess:
    """``ranksweep ARGS`` in ``cwd``; output captured as text."""
    return subprocess.run([BIN, *args], cwd=cwd, env=env(cache, **extra), capture_output=True, text=True,
                          timeout=timeout)


def sweep(cwd: Path, cache: Path, *args: str, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    """A tiny ``ranksweep -m`` sweep (:data:`TINY_SWEEP` plus ``args``)."""
    return ranksweep(cwd, "-m", *TINY_SWEEP, *args, cache=cache, timeout=timeout, **extra)


def start(cwd: Path, cache: Path, *args: str) -> subprocess.Popen:
    """A ``ranksweep`` process in its own session (so a test can kill it and its children)."""
    return subprocess.Popen([BIN, *args], cwd=cwd, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(procs: Sequence[subprocess.Popen], timeout: int = 900) -> list[tuple[int, str, str]]:
    """Each process's (return code, stdout, stderr). One still running after ``timeout`` s fails the test
    with its output, and every process here is killed (with its children), so no hung sweep outlives it."""
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
            raise AssertionError(f"still running after {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
        out.append((p.returncode, stdout, stderr))
    return out


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single ``ranksweep: error: ...`` line a bad input must end with (asserted); returns it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def summary(cwd: Path, study: str) -> dict:
    return json.loads((cwd / "outputs" / "sweeps" / study / "sweep_summary.json").read_text())


def curve(doc: dict) -> list:
    """What must agree between two runs of the same sweep: ranks, values, decisions."""
    return [(lad["key"], lad["base"], [(r["rank"], r["values"], r["state"]) for r in lad["rungs"]],
             lad["stop_reason"], (lad["recommendation"] or {}).get("rank")) for lad in doc["ladders"]]


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
