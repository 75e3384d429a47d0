"""Helpers shared by the tests: paths, the tiny overrides (defined once, here), composed configs, a learnable
toy dataset, what each LoRA role means, the environment for child processes. Modules beside this one:
:mod:`.run` (the command: the real one in a subprocess, or its entry point in this process), :mod:`.curves`,
:mod:`.planted`, :mod:`.synthetic_app`, :mod:`.postgres`, :mod:`.slurm`, :mod:`.report_dom`. Fixtures stay in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import random
import string
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"  # the config tree (the wheel maps it to ranksweep/conf/)
SWEEPS = REPO / "sweeps"  # the sweep presets, the group `sweep` (+sweep=NAME; ranksweep/sweeps/ in the wheel)
FAMILIES = ("llama", "qwen2", "phi3", "gemma2", "gemma3", "mistral")
PYTHON = sys.executable

# The tiny overrides, defined here once; a test that needs something else adds overrides after them (a later
# value of the same key wins; a sweep is better off adding keys than repeating one).
# A tiny single run: the tiny Llama, small data, few generated examples, no tracker (20 steps: trainer=tiny).
TINY_RUN = ("model=tiny_llama", "trainer=tiny", "data.max_examples=200", "data.eval_size=20",
            "data.metric_examples=8", "logger=none")
TINY_OVERRIDES = TINY_RUN  # its former name
# The sweep's own checks at their cheapest: one noise seed (the least seeds_per_rank=1 allows), no budget
# check, no further seeds where the data lean. At the defaults they add 4 trials to a 3-rank ladder, two
# of them at 3x the steps (and 4 more where the data lean). The sweeps that test them keep the defaults:
# test_noise's, test_sweeper's end-to-end sweep and its resume (CHECKS),
# test_report's rs_seeds and test_install's +sweep=rank_doubling.
NO_CHECKS = ("hydra.sweeper.noise_seeds=1", "hydra.sweeper.budget_check=0", "hydra.sweeper.resolve_seeds=0")


def _defaults() -> tuple[str, ...]:
    from ranksweep.sweep.settings import SweepSettings

    keys = ("noise_seeds", "budget_check", "resolve_seeds")
    return tuple(f"hydra.sweeper.{k}={getattr(SweepSettings, k)}" for k in keys)


CHECKS = _defaults()  # the checks as a user gets them: SweepSettings' defaults
# A tiny sweep: r = 8, 16, 32 on the tiny Llama, 12 steps a trial (a few seconds each); W&B as the env says.
TINY_SWEEP = ("model=tiny_llama", "trainer=tiny", "trainer.max_steps=12", "trainer.eval_every=4",
              "data.max_examples=160", "data.eval_size=16", "data.metric_examples=4", "hydra.sweeper.max_rank=32",
              *NO_CHECKS)
# Shrunk further, for commands that only need to get as far as a bad input, or to a 2-step adapter: 60
# examples, no tracker, the trainer left to the test (SHRUNK_SWEEP's is the default unless it adds one).
SHRUNK = ("model=tiny_llama", "logger=none", "data.max_examples=60", "data.eval_size=10", "data.metric_examples=2")
SHRUNK_RUN = (*SHRUNK, "trainer=tiny", "trainer.max_steps=2")
SHRUNK_SWEEP = ("-m", *SHRUNK, "hydra.sweeper.max_rank=8", *NO_CHECKS)  # r = 8 only


def compose(*overrides: str, return_hydra_config: bool = False):
    """``conf/config.yaml`` composed with ``overrides``, as ``ranksweep`` composes it (``ranksweep.compose``).

    A bad override raises :class:`ranksweep.errors.ConfigError` with the command's one-line message.
    """
    from ranksweep.compose import compose as compose_config

    return compose_config(overrides, return_hydra_config=return_hydra_config)


def write_toy_jsonl(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A learnable task: reverse a short lower-case string (``abcd`` -> ``dcba``)."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase[:8]
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 5)))
            fh.write(json.dumps({"prompt": word, "response": word[::-1]}) + "\n")
    return path


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
    # WANDB_SERVICE: a W&B service this session started is not the child's (conftest shuts it down).
    for key in ("HYDRA_FULL_ERROR", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS",
                "WANDB_SERVICE"):
        env.pop(key, None)
    env.update(extra)
    return env


def other_architecture(kind: str, folder) -> str:
    """A random-init tiny model of an architecture no ``model.family`` describes, saved as a user's folder."""
    import torch
    import transformers as T
    from transformers import AutoModelForCausalLM

    from ranksweep.models import tiny_tokenizer

    tok = tiny_tokenizer()
    v, h = len(tok), 64
    config = {
        "gpt2": lambda: T.GPT2Config(vocab_size=v, n_embd=h, n_layer=2, n_head=4),
        "opt": lambda: T.OPTConfig(vocab_size=v, hidden_size=h, ffn_dim=128, num_hidden_layers=2,
                                   num_attention_heads=4, word_embed_proj_dim=h),
        "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=v, hidden_size=h, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4),
        "phi": lambda: T.PhiConfig(vocab_size=v, hidden_size=h, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4),
        "falcon": lambda: T.FalconConfig(vocab_size=v, hidden_size=h, num_hidden_layers=2, num_attention_heads=4),
        # Mixtures of experts: routed experts as fused 3-D parameters; Qwen2-MoE adds a shared expert.
        "qwen3_moe": lambda: T.Qwen3MoeConfig(vocab_size=v, hidden_size=h, intermediate_size=128, head_dim=16,
                                              moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        "qwen2_moe": lambda: T.Qwen2MoeConfig(vocab_size=v, hidden_size=h, intermediate_size=128,
                                              moe_intermediate_size=64, shared_expert_intermediate_size=64,
                                              num_experts=4, num_experts_per_tok=2, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2),
        "mixtral": lambda: T.MixtralConfig(vocab_size=v, hidden_size=h, intermediate_size=128, num_local_experts=4,
                                           num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2),
    }[kind]()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
