"""The memory estimator: GPU anchors, exact LoRA counts, CPU footprints of the tiny models, the command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import subprocess_env

from ranksweep.config import ModelConfig, QuantConfig
from ranksweep.errors import ConfigError
from ranksweep.memory import (
    ANCHOR_FOOTPRINT_GB,
    ANCHOR_TRAINABLE,
    ANCHORS,
    GB,
    KNOWN_SHAPES,
    estimate,
    known_config,
    lora_params,
)

# (model, seq_len, micro_batch, grad_ckpt, measured peak GB) on one GPU, plain HF+peft+bnb loop.
ANCHOR_TABLE = [
    ("llama3_2_1b", 2048, 4, True, 16.03),
    ("llama3_2_1b", 2048, 4, False, 36.67),
    ("llama3_1_8b", 2048, 1, True, 13.69),
    ("llama3_1_8b", 2048, 4, True, 30.07),
]


def test_anchor_table_is_the_modules():
    assert list(ANCHORS) == ANCHOR_TABLE


def test_gpu_anchors_within_15_percent(capsys):
    rows = []
    for name, seq, batch, ckpt, measured in ANCHOR_TABLE:
        est = estimate(known_config(name), "llama", 4, 16, "all_linear", batch, seq, ckpt,
                       dtype_bytes=2, double_quant=True)
        err = est.total / GB / measured - 1
        rows.append((name, seq, batch, ckpt, measured, est.total / GB, err))
    with capsys.disabled():
        print("\nmodel         seq x b   ckpt  measured  predicted  error")
        for name, seq, batch, ckpt, measured, pred, err in rows:
            mode = "on " if ckpt else "off"
            print(f"{name:<13} {seq}x{batch}   {mode}   {measured:6.2f}    {pred:6.2f}   {err:+.1%}")
    for row in rows:
        assert abs(row[-1]) < 0.15, row


@pytest.mark.parametrize("name", sorted(ANCHOR_FOOTPRINT_GB))
def test_anchor_weight_footprints(name):
    est = estimate(known_config(name), "llama", 4, 16, "all_linear", 1, 2048, True)
    assert est.footprint / GB == pytest.approx(ANCHOR_FOOTPRINT_GB[name], abs=0.01)
    # The 8B: ~5.6 GB in NF4, not ~2 GB -- embeddings and the head stay in bf16.
    assert est.weights > est.footprint > 0


@pytest.mark.parametrize("name", sorted(ANCHOR_TRAINABLE))
def test_lora_params_exact(name):
    est = estimate(known_config(name), "llama", 4, 16, "all_linear", 1, 2048, True)
    assert est.lora_params == ANCHOR_TRAINABLE[name]
    assert est.lora == 4 * ANCHOR_TRAINABLE[name]
    assert est.optimizer == 12 * ANCHOR_TRAINABLE[name]  # fp32 grads + two AdamW moments


def test_quant_state_overhead():
    cfg = known_config("llama3_1_8b")
    dq = estimate(cfg, "llama", 4, 16, "all_linear", 1, 2048, True, double_quant=True)
    plain = estimate(cfg, "llama", 4, 16, "all_linear", 1, 2048, True, double_quant=False)
    linear = 6_979_321_856
    assert dq.quant_state * 8 / linear == pytest.approx(0.127, abs=0.001)  # bits per parameter
    assert plain.quant_state * 8 / linear == pytest.approx(0.5)
    int8 = estimate(cfg, "llama", 8, 16, "all_linear", 1, 2048, True)
    assert 8.5 < int8.weights / GB < 9.5  # README: int8 about 9 GB


def test_parts_move_the_right_way():
    cfg = known_config("llama3_2_1b")
    base = dict(config=cfg, family="llama", bits=4, r=16, targets="all_linear", micro_batch=4, seq_len=2048)
    on, off = estimate(**base, grad_ckpt=True), estimate(**base, grad_ckpt=False)
    assert off.activations > 5 * on.activations and on.logits == off.logits
    assert on.logits > on.activations  # 128k vocab: the logits dominate
    assert estimate(**base, grad_ckpt=True, optimizer="sgd").optimizer == 4 * on.lora_params
    assert estimate(**{**base, "bits": 16}, grad_ckpt=True).weights > 2 * on.weights
    table = on.table()
    for part in ("weights", "lora", "optimizer", "activations", "logits", "total"):
        assert part in table
    assert f"{on.total / GB:.2f} GB" in table


def test_phi3_fused_modules_and_bad_targets():
    cfg = known_config("phi3_5_mini")
    h, i, q, kv = 3072, 8192, 3072, 3072
    assert lora_params(cfg, "phi3", 8, "qv") == 32 * 8 * (h + q + 2 * kv)
    assert lora_params(cfg, "phi3", 8, "mlp") == 32 * 8 * ((h + 2 * i) + (i + h))
    with pytest.raises(ConfigError, match="q_proj, v_proj not in a phi3 model"):
        lora_params(cfg, "phi3", 8, "q_proj+v_proj")
    assert set(KNOWN_SHAPES) >= {"llama3_1_8b", "llama3_1_8b_instruct", "llama3_2_1b", "qwen2_5_7b_instruct",
                                 "phi3_5_mini", "gemma2_2b", "mistral_7b"}


QUANTS = {
    "nf4": QuantConfig(),
    "nf4-nodq": QuantConfig(double_quant=False),
    "int8": QuantConfig(name="int8", bits=8, quant_type="int8", double_quant=False),
    "none": QuantConfig(name="none", bits=16, quant_type="none", double_quant=False),
}


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_cpu_footprint_and_lora_params_of_tiny_models(family, rs_cache):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    from ranksweep.models import load_base, resolve_model_path
    from ranksweep.targets import resolve_targets

    mc = ModelConfig(name=f"tiny_{family}", id=f"tiny:{family}", family=family, dtype="float32")
    config = AutoConfig.from_pretrained(resolve_model_path(mc, rs_cache))
    for qname, quant in QUANTS.items():
        model, _, _ = load_base(mc, quant, "cpu", str(rs_cache))
        measured = model.get_memory_footprint()
        est = estimate(config, family, quant.bits, 8, "all_linear", 1, 32, False, dtype_bytes=4,
                       double_quant=quant.double_quant)
        assert abs(est.weights / measured - 1) < 0.15, (qname, est.weights, measured)
        assert abs(est.footprint / measured - 1) < 0.01, (qname, est.footprint, measured)
        if qname == "nf4":
            for targets in ("all_linear", "qv", "mlp"):
                peft_model = get_peft_model(model, LoraConfig(
                    r=8, lora_alpha=16, target_modules=resolve_targets(model, family, targets)))
                trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
                assert lora_params(config, family, 8, targets) == trainable, targets
                model = peft_model.unload()


def _estimate_cmd(*args: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "ranksweep.cli", "estimate", *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_estimate_command_prints_total_and_parts():
    res = _estimate_cmd("model=llama3_1_8b", "trainer=gpu", "lora.r=16")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "peak memory estimate:" in res.stdout and " GB" in res.stdout
    for part in ("weights", "dequant_cache", "lora", "optimizer", "activations", "logits", "overhead", "total"):
        assert part in res.stdout
    assert "41,943,040 adapter params" in res.stdout


def test_estimate_command_prints_the_plan_for_a_limit():
    """An 80 GB card: the 8B at 2048x4 fits with some layers checkpointed and every layer's weights
    dequantized; 12 GB: it does not fit, whatever is recomputed."""
    res = _estimate_cmd("model=llama3_1_8b", "trainer=gpu", "lora.r=16", "trainer.memory_limit_gb=80")
    assert res.returncode == 0, res.stderr
    assert "limit 80.00 GB (trainer.memory_limit_gb): fits" in res.stdout
    assert "dequantized copies of 32 layers" in res.stdout and "grad_ckpt=" in res.stdout
    total = float(res.stdout.split("peak memory estimate: ")[1].split(" GB")[0])
    assert total <= 80
    small = _estimate_cmd("model=llama3_1_8b", "trainer=gpu", "lora.r=16", "trainer.memory_limit_gb=12")
    assert small.returncode == 0 and "DOES NOT FIT" in small.stdout and "dequantized copies of 0 layers" in small.stdout
    plain = _estimate_cmd("model=llama3_1_8b", "trainer=gpu", "lora.r=16")
    import torch

    if torch.cuda.is_available():
        assert "GB (cuda memory): " in plain.stdout
    else:  # planning a GPU run here: no limit is known, and it says how to give one
        assert "limit: none known (no cuda device here)" in plain.stdout and "trainer.memory_limit_gb=" in plain.stdout


def test_estimate_command_tiny_model_reads_its_config():
    res = _estimate_cmd("model=tiny_phi3", "quant=none", "lora.targets=qv")
    assert res.returncode == 0, res.stderr
    assert "phi3, 16-bit" in res.stdout and "fp32" in res.stdout


@pytest.mark.parametrize("args, message", [
    (("lora.r=-4",), "lora.r must be a positive integer"),
    (("model=nope",), "model/nope"),
    (("model=llama3_1_8b", "lora.targets=foo_proj"), "foo_proj not in a llama model"),
    (("model.id=some/hub-model", "model.name=unknown"), "no built-in shape"),
])
def test_estimate_command_bad_input(args, message):
    res = _estimate_cmd(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error: ") and message in lines[0], res.stderr
    assert res.stdout == ""


def test_a_shape_is_looked_up_by_model_id_not_by_the_groups_name():
    """model=llama3_1_8b model.id=<the 1B>: the 1B's shape (model.name stays the group's label)."""
    one_b = _estimate_cmd("model=llama3_2_1b")
    renamed = _estimate_cmd("model=llama3_1_8b", "model.id=meta-llama/Llama-3.2-1B")
    assert one_b.returncode == renamed.returncode == 0, renamed.stderr
    weights = [next(line for line in r.stdout.splitlines() if line.strip().startswith("weights")) for r in
               (one_b, renamed)]
    assert weights[0] == weights[1]


def test_estimate_reads_an_architecture_outside_the_families(tmp_path):
    """GPT-2 names its MLP width n_inner (None: 4h): the estimate reads it instead of failing."""
    from helpers import other_architecture

    res = _estimate_cmd(f"model.id={other_architecture('gpt2', tmp_path / 'gpt2')}")
    assert res.returncode == 0, res.stderr
    assert "peak memory estimate" in res.stdout
