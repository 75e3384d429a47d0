"""What makes a trial fast: padding-free packing, a chunked cross-entropy, kernels, memory policy.

Each part keeps the loss of the plain path (a padded batch and ``model(**batch).loss``) within
float rounding; ``tests/test_speed.py`` checks that on every tiny model family.

- :class:`PackedCollator` concatenates a micro-batch into one row with ``position_ids`` that restart
  at 0 for every example (transformers' ``DataCollatorWithFlattening``). transformers builds a
  block-diagonal causal mask from those positions (SDPA, eager) or hands sequence boundaries to
  FlashAttention, so no example attends to another and no FLOP is spent on padding. A batch whose
  rows all have the same length is left as it is.
- :func:`chunked_causal_lm_loss` is the causal-LM loss computed from the last hidden states:
  only the positions that carry a label go through the output head, a chunk of rows at a time,
  and their gradient is computed in the forward pass (the Liger kernel's approach), so the
  fp32 ``[tokens, vocab]`` logits and their gradient never exist for the whole batch.
- :func:`checkpoint_layers` and :func:`cache_dequantized` carry out what
  :func:`ranksweep.memory.plan_memory` decided: recompute only some layers, keep dequantized
  copies of some 4-bit layers.
- :func:`liger_kernel_config` is what the Trainer gets for ``trainer.kernels=liger``
  (``TrainingArguments(use_liger_kernel=True, liger_kernel_config=...)``): Liger's fused RMSNorm,
  SwiGLU/GeGLU and RoPE on CUDA, its cross-entropies off (the loss stays the chunked one).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch

from ranksweep.data import IGNORE_INDEX, CausalCollator, as_list
from ranksweep.errors import ConfigError

log = logging.getLogger("ranksweep")


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


# transformers' DataCollatorWithFlattening does the packing (and FlashAttention's cu_seq_lens/max_length
# kwargs); it lacks the fallback to a plain batch when no row needs padding (no position_ids: the
# fastest attention path), which is all this class adds.
class PackedCollator:
    """One row per micro-batch: the examples back to back, positions restarting at 0.

    The first label of every example is set to -100, so the last token of one example never
    learns to predict the next example (in a padded batch that label is dropped by the shift).
    With ``flash_kwargs`` the row also carries ``cu_seq_lens_*``/``max_length_*`` for
    FlashAttention's variable-length kernel. When every row has the same length there is no
    padding to remove and the batch is collated as usual (no mask, the fastest attention path).
    """

    def __init__(self, tokenizer: Any, flash_kwargs: bool = False) -> None:
        from transformers import DataCollatorWithFlattening

        self.tokenizer = tokenizer
        self.flash_kwargs = flash_kwargs
        self.padded = CausalCollator(tokenizer)
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                                  return_flash_attn_kwargs=flash_kwargs)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("PackedCollator got an empty batch")
        lengths = {len(as_list(f["input_ids"])) for f in features}
        if len(lengths) == 1 and all("attention_mask" not in f or all(as_list(f["attention_mask"]))
                                     for f in features):
            return self.padded(features)
        return self.flatten([{k: f[k] for k in ("input_ids", "labels") if k in f} for f in features])


def uses_flash_attention(model: Any) -> bool:
    """Whether the model runs a FlashAttention kernel (flash_attention_2/3, a hub kernel of flash-attn)."""
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return "flash" in impl


def packing_collator(tokenizer: Any, model: Any) -> PackedCollator:
    return PackedCollator(tokenizer, flash_kwargs=uses_flash_attention(model))


# ---------------------------------------------------------------------------
# Chunked cross-entropy
# ---------------------------------------------------------------------------


# Liger's fused linear cross-entropy is Triton (CUDA only), and neither torch nor transformers has a
# chunked one: no library covers CPU, logit soft-capping and labelled rows only.
class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of ``hidden @ weight.T``, computed ``chunk`` rows at a time.

    The gradient with respect to ``hidden`` is computed in the forward pass and kept (it has
    the size of ``hidden``); the head ``weight`` is frozen, as in every LoRA setup that does
    not train the output head.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                softcap: Optional[float], chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk]
            y = targets[start:start + chunk]
            logits = (h @ w.t()).float()
            t = None
            if softcap:
                t = torch.tanh(logits / softcap)
                logits = t * softcap
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, y[:, None])[:, 0]
            total += (lse - picked).sum()
            if grad is not None:
                g = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                g[torch.arange(g.shape[0], device=g.device), y] -= 1.0
                if t is not None:
                    g *= 1.0 - t * t  # d/dx softcap * tanh(x / softcap)
                grad[start:start + chunk] = (g.to(w.dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None


def chunked_causal_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                           num_items_in_batch: Optional[Any] = None, softcap: Optional[float] = None,
                           chunk: int = 1024) -> torch.Tensor:
    """The causal-LM loss of transformers (``ForCausalLMLoss``) from hidden states, without full logits.

    ``hidden`` is ``[batch, seq, dim]``, ``labels`` ``[batch, seq]`` unshifted with -100 where no
    loss is taken. Returns the sum over labelled positions divided by ``num_items_in_batch`` when
    given, else their mean -- what ``model(..., labels=labels).loss`` returns.
    """
    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep)
    total = _LinearCrossEntropy.apply(states, head_weight, targets.index_select(0, keep), softcap, int(chunk))
    if num_items_in_batch is None:
        return total / max(int(keep.numel()), 1) if keep.numel() else total * 0.0
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


@torch.no_grad()
def chunked_eval_rows(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                      softcap: Optional[float] = None, chunk: int = 1024
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the summed token loss and the number of scored tokens; and the greedy next-token ids
    ``[batch, seq]`` (filled only where the next token carries a label, 0 elsewhere: all the token
    accuracy reads). No ``[batch, seq, vocab]`` tensor is made."""
    b, s, d = hidden.shape
    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    states = hidden[:, :-1].reshape(-1, d).index_select(0, keep)
    w = head_weight if head_weight.dtype == states.dtype else head_weight.to(states.dtype)
    y = targets.index_select(0, keep)
    token_loss = torch.empty(y.shape[0], dtype=torch.float32, device=hidden.device)
    picked_ids = torch.empty_like(y)
    for start in range(0, states.shape[0], chunk):
        logits = (states[start:start + chunk] @ w.t()).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        yy = y[start:start + chunk]
        token_loss[start:start + chunk] = torch.logsumexp(logits, -1) - logits.gather(1, yy[:, None])[:, 0]
        picked_ids[start:start + chunk] = logits.argmax(-1)
    rows = torch.div(keep, s - 1, rounding_mode="floor")
    sums = torch.zeros(b, dtype=torch.float32, device=hidden.device).index_add_(0, rows, token_loss)
    counts = torch.zeros(b, dtype=torch.long, device=hidden.device).index_add_(0, rows, torch.ones_like(rows))
    preds = torch.zeros(b * (s - 1), dtype=torch.long, device=hidden.device)
    preds.index_copy_(0, keep, picked_ids)
    preds = torch.cat([preds.view(b, s - 1), torch.zeros(b, 1, dtype=torch.long, device=hidden.device)], dim=1)
    return sums, counts, preds


@torch.no_grad()
def chunked_eval(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                 softcap: Optional[float] = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over labelled positions and the greedy next-token ids (see :func:`chunked_eval_rows`)."""
    sums, counts, preds = chunked_eval_rows(hidden, head_weight, labels, softcap, chunk)
    n = int(counts.sum())
    loss = sums.sum() / n if n else torch.tensor(float("nan"), device=hidden.device)
    return loss, preds


@torch.no_grad()
def logits_eval_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed token loss and the number of scored tokens, from a model's full logits."""
    shift, target = logits[:, :-1].float(), labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="none").view(target.shape)
    mask = target != IGNORE_INDEX
    return (loss * mask).sum(dim=1), mask.sum(dim=1)


def causal_lm_parts(model: Any) -> Optional[tuple[Any, Any, Optional[float]]]:
    """``(decoder, output head, final_logit_softcapping)`` of a (peft-wrapped) causal LM, or None
    when the chunked loss cannot stand in for the model's own (trainable head, unknown layout)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, "model", None)
    head = getattr(inner, "lm_head", None)
    weight = getattr(head, "weight", None)
    if decoder is None or not isinstance(head, torch.nn.Linear) or weight is None or head.bias is not None:
        return None
    if weight.requires_grad or weight.dim() != 2 or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None
    config = getattr(inner, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    return decoder, head, (float(softcap) if softcap else None)


def chunked_loss_forward(model: Any, inputs: dict[str, Any], num_items_in_batch: Optional[Any], chunk: int,
                         training: bool = True, rows: Optional[list] = None
                         ) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``(loss, predicted ids or None)`` of ``model`` on ``inputs`` through the chunked loss; None when
    the model's layout does not allow it (the caller then uses the model's own loss). In evaluation,
    ``rows`` (a list) receives each row's ``(summed token loss, scored tokens)``."""
    parts = causal_lm_parts(model)
    if parts is None or "labels" not in inputs:
        return None
    decoder, head, softcap = parts
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    out = decoder(**inputs, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if training:
        return chunked_causal_lm_loss(hidden, head.weight, labels, num_items_in_batch, softcap, chunk), None
    sums, counts, preds = chunked_eval_rows(hidden, head.weight, labels, softcap, chunk)
    if rows is not None:
        rows.extend(zip(sums.tolist(), counts.tolist()))
    n = int(counts.sum())
    return (sums.sum() / n if n else torch.tensor(float("nan"), device=hidden.device)), preds


# ---------------------------------------------------------------------------
# Memory spent on speed (what plan_memory decided)
# ---------------------------------------------------------------------------


# transformers' gradient_checkpointing_enable() is every decoder layer or none.
def checkpoint_layers(model: Any, k: int) -> int:
    """Keep checkpointing on for the first ``k`` decoder layers only (after checkpointing was enabled).

    Returns the number of layers that recompute. transformers checks each layer's own
    ``gradient_checkpointing`` flag, so the others keep their activations and skip the
    recomputation.
    """
    layers = _decoder_layers(model)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < k
    return min(k, len(layers))


def _decoder_layers(model: Any) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _cached_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``bnb.nn.Linear4bit.forward`` with the weight dequantized once, ahead of time."""
    w = self._rs_dequantized
    inp_dtype = x.dtype
    bias = None if self.bias is None else self.bias.to(w.dtype)
    return torch.nn.functional.linear(x.to(w.dtype), w, bias).to(inp_dtype)


# bitsandbytes has no option to keep a 4-bit layer's dequantized weight between calls.
def cache_dequantized(model: Any, n_layers: int, dtype: torch.dtype) -> int:
    """Keep a ``dtype`` copy of the dequantized 4-bit weights of the first ``n_layers`` decoder layers.

    The frozen base never changes, so dequantizing it once gives exactly the values bitsandbytes
    recomputes in every forward and backward pass (and again under checkpointing); the forward
    becomes one plain matmul. Costs ``dtype`` bytes per weight of those layers. Layers past
    ``n_layers`` drop a copy a previous trial left. Returns the number of 4-bit linears cached.
    """
    import bitsandbytes as bnb

    cached = 0
    for i, layer in enumerate(_decoder_layers(model)):
        for module in layer.modules():
            if not isinstance(module, bnb.nn.Linear4bit):
                continue
            keep = i < n_layers
            have = getattr(module, "_rs_dequantized", None)
            if keep and (have is None or have.dtype != dtype):
                w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                module._rs_dequantized = w.to(dtype).contiguous()
                module.forward = _cached_forward.__get__(module)
            elif not keep and have is not None:
                del module._rs_dequantized
                del module.forward  # back to the class's forward
            cached += keep
    return cached


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

def liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def resolve_kernels(choice: str, device: str) -> str:
    """``none`` or ``liger`` for ``trainer.kernels`` (auto: liger on CUDA when it is installed)."""
    if choice == "auto":
        return "liger" if device == "cuda" and liger_available() else "none"
    if choice == "liger":
        if device != "cuda":
            raise ConfigError("trainer.kernels=liger needs a CUDA device (Liger's kernels are Triton); "
                              "use trainer.kernels=auto or none on CPU")
        if not liger_available():
            from ranksweep.extras import install_hint

            raise ConfigError(f"trainer.kernels=liger needs the liger-kernel package: {install_hint('liger')}")
    return choice


def liger_kernel_config() -> dict[str, bool]:
    """``TrainingArguments.liger_kernel_config``: transformers unwraps the peft model and hands these to
    Liger's patch for the model's family (each family's patch takes the keys it knows: swiglu or geglu).
    The cross-entropy stays ranksweep's chunked loss (labelled positions only, soft-capping)."""
    return {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True,
            "cross_entropy": False, "fused_linear_cross_entropy": False}
