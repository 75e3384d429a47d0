"""Predict a trial's peak memory before launching it.

:func:`estimate` adds up, in bytes:

- ``weights``: the frozen base. Targetable linear layers (every q/k/v/o and MLP projection) in
  4 bits take 0.5 B/param plus the quantization state: one fp32 absmax per 64-weight block
  (4/64 B/param = 0.5 bit/param), or with double quantization an 8-bit absmax per block plus one
  fp32 absmax per 256 blocks (1/64 + 4/(64*256) B/param = 0.127 bit/param). 8 bits: 1 B/param plus
  one fp32 scale per output row. 16 bits: ``dtype_bytes``/param. Embeddings, lm_head (once when tied)
  and norms stay in the compute dtype (bf16 on GPU, fp32 on CPU) -- which is why an 8B model in NF4
  takes 5.6 GB, not the ~2 GB often quoted: its 128k-vocab embeddings and untied head are 2.1 GB.
  ``quant_state`` is the part of ``weights`` that ``model.get_memory_footprint()`` does not count
  (bitsandbytes keeps absmax/scales outside the parameters); ``footprint = weights - quant_state``.
  ``kbit_prep=True`` adds what peft's ``prepare_model_for_kbit_training`` (what ranksweep's trial calls
  for 4/8-bit bases) costs: the 16-bit non-quantized parameters upcast to fp32, and under autocast a
  16-bit copy of the output head kept for the backward pass.
- ``lora``: adapter parameters, r * (in + out) per targeted linear layer, in fp32.
- ``optimizer``: fp32 gradients (4 B) plus AdamW's two fp32 moments (8 B) per trainable parameter
  (``adamw_8bit``: 2 B of moments; ``sgd``: none).
- ``activations``: per token and layer, with ``a = dtype_bytes``, ``h`` hidden, ``q``/``kv`` the
  query/key-value widths, ``i`` the MLP width (SDPA/flash attention: no seq^2 scores)::

      X = n_norms*(4 + a)*h         RMSNorm upcasts to fp32: its fp32 input and normalised output
        + a*h + a*(2q + 3kv) + a*q  attention input, q/k (before and after RoPE) and v, SDPA output
        + a*h + 4a*i                MLP input, gate, up, act(gate), act(gate)*up
        + sum over LoRA targets of  (a + 1)*in   (dropout output + mask; only when dropout > 0)
                                  + a*r          (lora_A output)

  Without checkpointing every layer keeps X: ``L*X*b*s``. With checkpointing only each layer's input
  is kept, plus one layer recomputed during backward: ``(L*a*h + X)*b*s``. Plus the final norm.
- ``logits``: with ``loss_impl=plain``, ``b*s*vocab*(2a + 8)``: the logits in the compute dtype (kept
  in the model output), the fp32 logits of the loss and their fp32 gradient, and that gradient cast
  back to the compute dtype, alive together in the cross-entropy backward (12 B per logit in bf16;
  in fp32 the upcast is the logits themselves: ``a + 8``). For a 128k vocabulary this is the largest
  term. With ``loss_impl=chunked`` (ranksweep's default) only one chunk of labelled rows has logits
  at a time: ``min(ce_chunk, b*s)*vocab*(8 [+ a in bf16])`` plus the gathered hidden states and
  their gradient.
- ``dequant_cache``: the dequantized copies of ``dequant_layers`` layers' 4-bit weights, ``a`` bytes
  per weight.
- ``overhead``: 0.5 B per base linear parameter for what the formula leaves out (bitsandbytes'
  dequantisation buffers, cuBLAS workspaces, autocast copies, allocator rounding). Fitted to the
  four GPU anchors in ``ANCHORS`` (errors +2.2%, +1.9%, +4.3%, -8.5%); without it the 8B anchors
  fall 20-21% short while the 1B ones stay within 1%.

``total`` is the sum: the peak, which comes in the loss backward, when the logits terms are alive
with every stored activation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ranksweep.errors import ConfigError
from ranksweep.targets import FAMILY_MODULES, role_modules

GB = 1e9

# Published architectures (the models' config.json on the Hugging Face hub), keyed by the model
# config names in conf/model/, so that `ranksweep estimate` never downloads anything.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.1-8B(-Instruct)
    "llama3_1_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    # meta-llama/Llama-3.2-1B
    "llama3_2_1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    # Qwen/Qwen2.5-7B-Instruct
    "qwen2_5_7b_instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, head_dim=128, vocab_size=152064,
                                tie_word_embeddings=False),
    # microsoft/Phi-3.5-mini-instruct (fused qkv_proj and gate_up_proj)
    "phi3_5_mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, head_dim=96, vocab_size=32064, tie_word_embeddings=False),
    # google/gemma-2-2b
    "gemma2_2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, vocab_size=256000, tie_word_embeddings=True),
    # mistralai/Mistral-7B-v0.3
    "mistral_7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=32768, tie_word_embeddings=False),
}
KNOWN_SHAPES["llama3_1_8b_instruct"] = KNOWN_SHAPES["llama3_1_8b"]
# The hub ids those shapes are: a shape is looked up by model.id, never by model.name (which stays the
# model group's label when only model.id is overridden).
KNOWN_IDS = {"meta-llama/Llama-3.1-8B": "llama3_1_8b", "meta-llama/Llama-3.1-8B-Instruct": "llama3_1_8b",
             "meta-llama/Llama-3.2-1B": "llama3_2_1b", "Qwen/Qwen2.5-7B-Instruct": "qwen2_5_7b_instruct",
             "microsoft/Phi-3.5-mini-instruct": "phi3_5_mini", "google/gemma-2-2b": "gemma2_2b",
             "mistralai/Mistral-7B-v0.3": "mistral_7b"}

# Peaks measured on one GPU with a plain HF + peft + bitsandbytes loop: NF4 + double quant, LoRA r=16 on
# all linear layers, bf16 autocast, SDPA, random init. (model, seq_len, micro_batch, grad_ckpt, peak GB).
ANCHORS: tuple[tuple[str, int, int, bool, float], ...] = (
    ("llama3_2_1b", 2048, 4, True, 16.03),
    ("llama3_2_1b", 2048, 4, False, 36.67),
    ("llama3_1_8b", 2048, 1, True, 13.69),
    ("llama3_1_8b", 2048, 4, True, 30.07),
)
# Their measured weight footprints (model.get_memory_footprint(), GB) and trainable parameters.
ANCHOR_FOOTPRINT_GB = {"llama3_2_1b": 1.01, "llama3_1_8b": 5.59}
ANCHOR_TRAINABLE = {"llama3_2_1b": 11_272_192, "llama3_1_8b": 41_943_040}

BLOCKSIZE = 64  # bitsandbytes 4-bit block size
DQ_BLOCKSIZE = 256  # double quantization: absmax values per second-level block
LOGIT_EXTRA_BYTES = 8  # the fp32 logits of the loss + their gradient
OVERHEAD_PER_PARAM = 0.5  # bytes per base linear parameter, fitted to ANCHORS
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw_8bit": 2, "sgd": 0}


@dataclass(frozen=True)
class Shape:
    """The config fields the estimate reads; a stand-in for a transformers PretrainedConfig."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: Optional[int] = None
    tie_word_embeddings: bool = False


def known_config(name: str) -> Shape:
    if name not in KNOWN_SHAPES:
        raise ConfigError(f"model: no built-in shape for {name!r}; known: {', '.join(sorted(KNOWN_SHAPES))}")
    return Shape(**KNOWN_SHAPES[name])


def model_dims(config: Any) -> dict[str, int]:
    h = int(config.hidden_size)
    nh = int(config.num_attention_heads)
    nkv = int(getattr(config, "num_key_value_heads", None) or nh)
    hd = int(getattr(config, "head_dim", None) or h // nh)
    # The MLP width under the names other architectures give it (GPT-2 n_inner, OPT ffn_dim), else 4h.
    i = next((int(v) for k in ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
              if (v := getattr(config, k, None))), 4 * h)
    return dict(h=h, i=i, L=int(config.num_hidden_layers), q=nh * hd, kv=nkv * hd, hd=hd, V=int(config.vocab_size))


def linear_shapes(config: Any, family: str) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each adaptable projection of one decoder layer."""
    d = model_dims(config)
    h, i, q, kv = d["h"], d["i"], d["q"], d["kv"]
    if family == "phi3":
        return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def target_shapes(config: Any, family: str, targets: str | tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
    """The targeted projections: a role (``all_linear``...) or names, resolved per family."""
    names = role_modules(family, targets) if isinstance(targets, str) else tuple(targets)
    shapes = linear_shapes(config, family)
    missing = [n for n in names if n not in shapes]
    if missing or not names:
        raise ConfigError(
            f"lora.targets: module(s) {', '.join(missing) or repr(targets)} not in a {family} model; "
            f"its linear modules are: {', '.join(shapes)} (roles: {', '.join(FAMILY_MODULES[family])})"
        )
    return {n: shapes[n] for n in dict.fromkeys(names)}


def lora_params(config: Any, family: str, r: int, targets: str | tuple[str, ...] | list[str]) -> int:
    """Trainable LoRA parameters: r * (in + out) per targeted linear layer, over all layers."""
    per_layer = sum(r * (i + o) for i, o in target_shapes(config, family, targets).values())
    return per_layer * model_dims(config)["L"]


def _norms_per_layer(family: str) -> int:
    return 4 if family in ("gemma2", "gemma3") else 2


@dataclass
class MemoryEstimate:
    """A trial's predicted peak memory, in bytes, by part."""

    weights: float
    dequant_cache: float
    lora: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    quant_state: float = 0.0  # included in weights; not counted by get_memory_footprint()
    lora_params: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return (self.weights + self.dequant_cache + self.lora + self.optimizer + self.activations + self.logits
                + self.overhead)

    @property
    def footprint(self) -> float:
        """What ``model.get_memory_footprint()`` reports for the base: weights without the quant state."""
        return self.weights - self.quant_state

    def parts(self) -> dict[str, float]:
        return {"weights": self.weights, "dequant_cache": self.dequant_cache, "lora": self.lora,
                "optimizer": self.optimizer, "activations": self.activations, "logits": self.logits,
                "overhead": self.overhead}

    def table(self) -> str:
        """A human-readable breakdown in GB (1e9 bytes)."""
        inp = self.inputs
        head = (f"peak memory estimate: {self.total / GB:.{2 if self.total >= GB else 4}f} GB"
                + (f"  ({inp['family']}, {inp['bits']}-bit, r={inp['r']}, targets={inp['targets']}, "
                   f"micro_batch={inp['micro_batch']} x seq {inp['seq_len']}, "
                   f"grad_ckpt={_ckpt_text(inp)}, "
                   f"{'bf16/fp16' if inp['dtype_bytes'] == 2 else 'fp32'})" if inp else ""))
        notes = {
            "weights": f"frozen base (footprint {self.footprint / GB:.2f} GB "
                       f"+ quant state {self.quant_state / GB:.2f})",
            "dequant_cache": f"dequantized copies of {inp.get('dequant_layers', 0)} layers' 4-bit weights",
            "lora": f"{self.lora_params:,} adapter params, fp32",
            "optimizer": "fp32 grads + optimizer states",
            "activations": "stored for backward" + (" (checkpointed)" if inp.get("grad_ckpt") else ""),
            "logits": ("one chunk of labelled rows' fp32 logits + hidden-state grads (chunked loss)"
                       if inp.get("loss_impl") == "chunked" else "logits, fp32 logits and their grads (loss backward)"),
            "overhead": "workspaces, dequant buffers, allocator (fitted)",
        }
        lines = [head]
        digits = 2 if self.total >= GB else 4  # tiny models: keep the parts readable
        for name, value in self.parts().items():
            lines.append(f"  {name:<14}{value / GB:>9.{digits}f} GB   {notes[name]}")
        lines.append(f"  {'total':<14}{self.total / GB:>9.{digits}f} GB")
        return "\n".join(lines)


def _ckpt_text(inp: dict[str, Any]) -> str:
    k, layers = int(inp.get("grad_ckpt") or 0), int(inp.get("layers") or 0)
    return "off" if not k else "on" if not layers or k >= layers else f"{k}/{layers} layers"


def _check_inputs(family: str, bits: int, r: int, micro_batch: int, seq_len: int, dtype_bytes: int,
                  optimizer: str) -> None:
    if family not in FAMILY_MODULES:
        raise ConfigError(f"model.family: unknown family {family!r}; known: {', '.join(FAMILY_MODULES)}")
    if bits not in (4, 8, 16):
        raise ConfigError(f"quant.bits must be 4, 8 or 16, got {bits!r}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_BYTES)}; got {optimizer!r}")
    for key, value in (("lora.r", r), ("trainer.micro_batch", micro_batch), ("trainer.max_seq_len", seq_len)):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if dtype_bytes not in (2, 4):
        raise ConfigError(f"dtype_bytes must be 2 or 4, got {dtype_bytes!r}")


def _weight_bytes(config: Any, family: str, bits: int, a: int, double_quant: bool, kbit_prep: bool,
                  dequant_layers: int) -> tuple[float, float, float, float]:
    """The frozen base: ``(weights, quant_state, dequant_cache, base linear parameters)``."""
    d = model_dims(config)
    h, L, V = d["h"], d["L"], d["V"]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    per_layer_linear = sum(i_ * o_ for i_, o_ in linear_shapes(config, family).values())
    linear = per_layer_linear * L
    rows = sum(o_ for _, o_ in linear_shapes(config, family).values()) * L
    embed = V * h * (1 if tied else 2)
    norms = (_norms_per_layer(family) * L + 1) * h
    if family == "gemma3":
        norms += 2 * d["hd"] * L  # q_norm, k_norm
    if bits == 4:
        stored = 0.5 * linear
        quant_state = linear * ((1 / BLOCKSIZE + 4 / (BLOCKSIZE * DQ_BLOCKSIZE)) if double_quant else 4 / BLOCKSIZE)
    elif bits == 8:
        stored = 1.0 * linear
        quant_state = 4.0 * rows  # one fp32 scale per output row
    else:
        stored = float(a * linear)
        quant_state = 0.0
    other_bytes = 4 if (kbit_prep and bits in (4, 8)) else a
    weights = stored + quant_state + other_bytes * (embed + norms)
    cache = float(a * per_layer_linear * max(0, min(int(dequant_layers), L))) if bits == 4 else 0.0
    return float(weights), float(quant_state), cache, float(linear)


def _activation_bytes(config: Any, family: str, shapes: dict[str, tuple[int, int]], r: int, a: int,
                      lora_dropout: float, tokens: int, k: int) -> float:
    """Activations stored for the backward pass, with the first ``k`` layers checkpointed."""
    d = model_dims(config)
    h, i, L, q, kv = d["h"], d["i"], d["L"], d["q"], d["kv"]
    x = _norms_per_layer(family) * (4 + a) * h
    x += a * h + a * (2 * q + 3 * kv) + a * q
    x += a * h + 4 * a * i
    for in_f, _ in shapes.values():
        x += a * r + ((a + 1) * in_f if lora_dropout > 0 else 0)
    final_norm = (4 + a) * h
    # The first k layers keep only their input; the others all of X. The peak is at the start of the
    # backward pass, or while the last checkpointed layer recomputes (the layers above it freed).
    per_token = k * a * h + max((L - k) * x, x if k else 0)
    return float(tokens * (per_token + final_norm))


def _logit_bytes(config: Any, a: int, tokens: int, seq_len: int, loss_impl: str, ce_chunk: int, eval_batch: int,
                 head_copy: bool) -> float:
    """The loss's logits and their gradients (see the module docstring)."""
    d = model_dims(config)
    h, V = d["h"], d["V"]
    if loss_impl == "chunked":
        # One chunk of labelled rows: its fp32 logits, their softmax-gradient and its 16-bit copy;
        # plus the gathered hidden states and their gradient.
        rows = min(int(ce_chunk), tokens)
        logits = float(rows * V * (LOGIT_EXTRA_BYTES + (a if a == 2 else 0)) + 2 * tokens * a * h)
    else:
        # In fp32 the loss's upcast is the logits themselves: one copy fewer than in bf16.
        logits = float(tokens * V * (a + LOGIT_EXTRA_BYTES + (a if a == 2 else 0)))
        if eval_batch:
            # Evaluation through the model's own loss: [eval_batch, seq, vocab] logits and their fp32
            # log-softmax, while the adapter and optimizer states stay allocated.
            logits = max(logits, float(eval_batch * seq_len * V * (a + 8)))
    if head_copy:
        logits += 2.0 * V * h  # autocast's 16-bit copy of the fp32 head, saved for backward
    return logits


def estimate(config: Any, family: str, bits: int, r: int, targets: str | tuple[str, ...] | list[str],
             micro_batch: int, seq_len: int, grad_ckpt: bool | int, dtype_bytes: int = 2, double_quant: bool = True,
             optimizer: str = "adamw", lora_dropout: float = 0.05, kbit_prep: bool = False,
             loss_impl: str = "plain", ce_chunk: int = 1024, eval_batch: int = 0,
             dequant_layers: int = 0) -> MemoryEstimate:
    """Predict the peak memory of one training step (see the module docstring for the formula).

    ``grad_ckpt``: True / False for every layer or none, or the number of checkpointed layers.
    ``dequant_layers``: 4-bit layers whose dequantized weights are kept (in the compute dtype).
    """
    _check_inputs(family, bits, r, micro_batch, seq_len, dtype_bytes, optimizer)
    a = dtype_bytes
    L = model_dims(config)["L"]
    weights, quant_state, cache, linear = _weight_bytes(config, family, bits, a, double_quant, kbit_prep,
                                                        dequant_layers)

    # Adapter and optimizer.
    shapes = target_shapes(config, family, targets)
    n_lora = sum(r * (i_ + o_) for i_, o_ in shapes.values()) * L
    lora = 4.0 * n_lora
    opt = (4.0 + OPTIMIZER_STATE_BYTES[optimizer]) * n_lora

    tokens = micro_batch * seq_len
    k = L if grad_ckpt is True else (0 if grad_ckpt is False else max(0, min(int(grad_ckpt), L)))
    activations = _activation_bytes(config, family, shapes, r, a, lora_dropout, tokens, k)
    logits = _logit_bytes(config, a, tokens, seq_len, loss_impl, ce_chunk, eval_batch,
                          head_copy=kbit_prep and bits in (4, 8) and a == 2)
    overhead = OVERHEAD_PER_PARAM * linear

    return MemoryEstimate(
        weights=weights, dequant_cache=cache, lora=lora, optimizer=opt, activations=activations, logits=logits,
        overhead=overhead, quant_state=quant_state, lora_params=n_lora,
        inputs=dict(family=family, bits=bits, r=r, targets=targets if isinstance(targets, str) else "+".join(targets),
                    micro_batch=micro_batch, seq_len=seq_len, grad_ckpt=k, layers=L, dtype_bytes=dtype_bytes,
                    dequant_layers=max(0, min(int(dequant_layers), L)) if bits == 4 else 0,
                    double_quant=double_quant, optimizer=optimizer, loss_impl=loss_impl),
    )


def _is_local(model_id: str) -> bool:
    return model_id.startswith(("tiny:", "embedded:")) or os.path.isdir(os.path.expanduser(model_id))


def model_config_for(run: Any) -> Any:
    """The architecture of ``run.model``: local/tiny/embedded/GGUF via AutoConfig; a hub id from the built-in
    table, else from the Hugging Face cache (or the hub, when online: only its config.json)."""
    model = run.model
    model_id = str(model.id)
    from transformers import AutoConfig

    from ranksweep.hub import hub_reachable

    if _is_local(model_id) or model_id.startswith((".", "/", "~")):
        from ranksweep.models import resolve_model_path

        path = resolve_model_path(model, os.path.expanduser(run.cache_dir))
        try:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.id: cannot read the config of {model_id!r}: {str(exc).splitlines()[0]}") from exc
        return text_config(cfg)
    if model_id in KNOWN_IDS:
        return known_config(KNOWN_IDS[model_id])
    online = hub_reachable()  # offline: the cache only, at once (not 20 s of retries)
    try:
        return text_config(AutoConfig.from_pretrained(model_id, revision=model.revision, local_files_only=not online,
                                                      trust_remote_code=model.trust_remote_code))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        why = first if online else "not in the Hugging Face cache, and the hub is not reachable"
    raise ConfigError(
        f"model: no built-in shape for {model_id!r} and its config.json: {why}; "
        f"built in: {', '.join(KNOWN_IDS)}; or set model.id to a local folder"
    )


def text_config(cfg: Any) -> Any:
    """The language model's config of a multimodal config (``text_config``), else the config itself."""
    return getattr(cfg, "text_config", None) if not hasattr(cfg, "hidden_size") else cfg


def run_device(run: Any) -> str:
    """``trainer.device`` with ``auto`` resolved (CUDA when available); unlike ``models.pick_device``
    it does not require the device to be here (a sweeper may plan for jobs that run elsewhere)."""
    device = run.trainer.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _device_dtype_bytes(run: Any) -> int:
    names = {"bfloat16": 2, "float16": 2, "float32": 4}
    if run.model.dtype in names:
        return names[run.model.dtype]
    return 2 if run_device(run) == "cuda" else 4


def estimate_run(run: Any, grad_ckpt: Optional[bool | int] = None, dequant_layers: int = 0,
                 config: Any = None) -> MemoryEstimate:
    """The estimate for a validated :class:`ranksweep.config.RunConfig`, as ranksweep's trial runs it.

    ``grad_ckpt`` overrides the config's (``auto`` is resolved by :func:`plan_memory`); ``config``
    is the model's architecture when already loaded (else read without downloading).
    """
    from ranksweep.config import OPTIMS

    config = model_config_for(run) if config is None else text_config(config)
    if grad_ckpt is None:
        grad_ckpt = bool(run.trainer.checkpointing)
    return estimate(
        config, run.model.family, run.quant.bits, run.lora.r, run.lora.targets,
        micro_batch=run.trainer.micro_batch, seq_len=run.trainer.max_seq_len,
        grad_ckpt=grad_ckpt, dtype_bytes=_device_dtype_bytes(run),
        double_quant=run.quant.double_quant, lora_dropout=run.lora.dropout,
        kbit_prep=run.quant.bits in (4, 8),  # the trial calls prepare_model_for_kbit_training
        optimizer=OPTIMS[run.trainer.optim][1], loss_impl=run.trainer.loss_impl,
        ce_chunk=run.trainer.ce_chunk, eval_batch=run.trainer.eval_batch, dequant_layers=dequant_layers,
    )
