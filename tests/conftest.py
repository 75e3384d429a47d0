"""Shared fixtures: a per-session cache, Hydra-composed tiny configs, a learnable toy dataset.

Everything runs on CPU with the tiny random-init models (``tiny:<family>``).
"""

from __future__ import annotations

import json
import os
import random
import string
import sys
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

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "ranksweep" / "conf"
FAMILIES = ("llama", "qwen2", "phi3", "gemma2", "gemma3", "mistral")

# A tiny single run, shrunk further: small data, few generated examples, no tracker.
TINY_OVERRIDES = (
    "model=tiny_llama",
    "trainer=tiny",
    "data.max_examples=200",
    "data.eval_size=20",
    "data.metric_examples=8",
    "logger=none",
)


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


@pytest.fixture(scope="session", autouse=True)
def rs_cache(tmp_path_factory) -> Path:
    """RANKSWEEP_CACHE points at a fresh temp dir for the whole session (tiny models, tokenised data)."""
    cache = tmp_path_factory.mktemp("rs-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RANKSWEEP_CACHE", str(cache))
    yield cache
    mp.undo()


def compose(*overrides: str, return_hydra_config: bool = False):
    """``conf/config.yaml`` composed with ``overrides``, as ``ranksweep`` composes it (``pkg://ranksweep.conf``).

    A bad override raises :class:`ranksweep.errors.ConfigError` with the command's one-line message.
    """
    from ranksweep.compose import compose as compose_config

    return compose_config(overrides, return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg(*overrides)``: the shrunk tiny config plus ``overrides`` (later ones win)."""

    def _compose(*overrides: str):
        return compose(*TINY_OVERRIDES, *overrides)

    return _compose


def write_toy_jsonl(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A learnable task: reverse a short lower-case string (``abcd`` -> ``dcba``)."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase[:8]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 5)))
            fh.write(json.dumps({"prompt": word, "response": word[::-1]}) + "\n")
    return path


@pytest.fixture(scope="session")
def toy_jsonl(tmp_path_factory) -> Path:
    return write_toy_jsonl(tmp_path_factory.mktemp("toy") / "reverse.jsonl")


# Written out here, not imported: what each role must mean for each family.
SPLIT = {
    "attention": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "mlp": {"gate_proj", "up_proj", "down_proj"},
    "qv": {"q_proj", "v_proj"},
}
FUSED = {"attention": {"qkv_proj", "o_proj"}, "mlp": {"gate_up_proj", "down_proj"}, "qv": {"qkv_proj"}}


def role_names(family: str, role: str) -> set[str]:
    table = FUSED if family == "phi3" else SPLIT
    if role == "all_linear":
        return table["attention"] | table["mlp"]
    return table[role]


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every adaptable projection, from the model config."""
    h, i = config.hidden_size, config.intermediate_size
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // nh
    return {
        "q_proj": (h, nh * hd), "k_proj": (h, nkv * hd), "v_proj": (h, nkv * hd), "o_proj": (nh * hd, h),
        "qkv_proj": (h, (nh + 2 * nkv) * hd),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h), "gate_up_proj": (h, 2 * i),
    }


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this session's cache, one thread, no colour."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    # The command must keep stderr clean by itself: don't lend it this session's switches.
    for key in ("HYDRA_FULL_ERROR", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    env.update(extra)
    return env


PYTHON = sys.executable
