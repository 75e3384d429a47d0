"""Shared fixtures: a per-session cache, Hydra-composed tiny configs, a learnable toy dataset (the helpers
themselves live in the ``helpers`` package beside this file).

Everything runs on CPU with the tiny random-init models (``tiny:<family>``).
"""

from __future__ import annotations

import os
from pathlib import Path

# One BLAS/OpenMP thread: on a small shared machine two spinning OpenMP threads per
# process make the tiny models' steps up to ~50x slower. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
from helpers import TINY_RUN, compose, write_toy_jsonl  # noqa: E402


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


@pytest.fixture(autouse=True)
def no_shared_wandb_service():
    """A test that starts a W&B run in this process starts W&B's service, and wandb puts its address in
    ``WANDB_SERVICE``, which every later child process would inherit and write its runs through (a sweep's
    last run was then missing from its folder when read back). Shut that service down after the test."""
    had = os.environ.get("WANDB_SERVICE")
    yield
    if os.environ.get("WANDB_SERVICE") != had:
        import wandb

        wandb.teardown()
        os.environ.pop("WANDB_SERVICE", None)
        if had is not None:
            os.environ["WANDB_SERVICE"] = had


@pytest.fixture(scope="session", autouse=True)
def rs_cache(tmp_path_factory) -> Path:
    """RANKSWEEP_CACHE points at a fresh temp dir for the whole session (tiny models, tokenised data)."""
    cache = tmp_path_factory.mktemp("rs-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RANKSWEEP_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg(*overrides)``: the shrunk tiny config plus ``overrides`` (later ones win)."""

    def _compose(*overrides: str):
        return compose(*TINY_RUN, *overrides)

    return _compose


@pytest.fixture(scope="session")
def toy_jsonl(tmp_path_factory) -> Path:
    return write_toy_jsonl(tmp_path_factory.mktemp("toy") / "reverse.jsonl")
