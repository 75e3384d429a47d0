"""A trial's adapter on its base: k-bit preparation, gradient checkpointing, LoRA, compilation.

Imported once a trial's data is known to be good (peft takes seconds to import).
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from ranksweep.config import RunConfig
from ranksweep.errors import ConfigError
from ranksweep.memory import MemoryPlan
from ranksweep.models import disable_cpu_bf16_repack
from ranksweep.speed import causal_lm_parts, checkpoint_layers

__all__ = ["add_lora", "adapter_summary", "compile_decoder", "prepare_for_training", "uncompile"]

_NON_REENTRANT = {"use_reentrant": False}


def prepare_for_training(model: Any, run: RunConfig, mem: MemoryPlan) -> Any:
    """k-bit preparation (4/8 bits) and gradient checkpointing on the layers ``mem`` chose."""
    ckpt = mem.grad_ckpt
    if run.quant.bits in (4, 8):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt,
                                                gradient_checkpointing_kwargs=dict(_NON_REENTRANT))
    elif ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(_NON_REENTRANT))
        model.enable_input_require_grads()
    if not ckpt and getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # a reused base may come from a checkpointed trial
    if ckpt and mem.ckpt_layers < mem.layers:
        checkpoint_layers(model, mem.ckpt_layers)
    return model


def add_lora(model: Any, run: RunConfig, modules: list[str]) -> Any:
    """A fresh LoRA adapter on ``modules`` (the peft-wrapped model)."""
    from ranksweep.targets import fused_rank_pattern, split_targets

    layers, params = split_targets(model, modules)  # a MoE model's fused experts are parameters
    if params and run.lora.dropout:
        raise ConfigError(f"lora.dropout: peft adapts a mixture-of-experts model's fused experts "
                          f"({', '.join(params)}) without dropout; set lora.dropout=0, or lora.targets=attention "
                          "to leave the experts out")
    rank_pattern, alpha_pattern = fused_rank_pattern(params, run.lora.r, run.lora.lora_alpha)
    lora_cfg = LoraConfig(
        r=run.lora.r, lora_alpha=run.lora.lora_alpha, lora_dropout=run.lora.dropout, bias=run.lora.bias,
        target_modules=layers or None, target_parameters=params or None, use_rslora=run.lora.use_rslora,
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_cfg)
    disable_cpu_bf16_repack(model)
    return model


def compile_decoder(model: Any) -> Any:
    """Compile the decoder, which both loss paths call (lazily, on the first step); returns what was compiled."""
    parts = causal_lm_parts(model)
    compiled = parts[0] if parts else model
    compiled.compile()
    return compiled


def uncompile(compiled: Any) -> None:
    """Undo :func:`compile_decoder`: a reused base goes back uncompiled."""
    compiled._compiled_call_impl = None


def adapter_summary(model: Any) -> dict[str, float]:
    """How many directions the trained update of each LoRA module uses (:mod:`ranksweep.evidence`)."""
    from ranksweep.evidence import summarize

    modules, scale = {}, 1.0
    for name, m in model.named_modules():
        a, b = getattr(m, "lora_A", None), getattr(m, "lora_B", None)
        if a is None or b is None or "default" not in a or type(m).__name__ == "ParamWrapper":
            continue  # expert parameters stack every expert's A and B: no one update to measure
        modules[name] = (a["default"].weight.detach().float().cpu().numpy(),
                         b["default"].weight.detach().float().cpu().numpy())
        scale = float(m.scaling["default"])
    return summarize(modules, scale) if modules else {}
