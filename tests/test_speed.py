"""Fast-trial paths keep the plain path's loss: packing, chunked cross-entropy, checkpointing, optimizers.

Tolerances (fp32 on CPU): one step's loss within 1e-5 relative and LoRA gradients within 1e-4
(the sums run in another order); a short training run's eval loss within 1e-3 relative.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import FAMILIES

from ranksweep import data as data_mod
from ranksweep.config import to_run_config
from ranksweep.errors import ConfigError
from ranksweep.memory import GB, plan_memory
from ranksweep.models import disable_cpu_bf16_repack, load_base
from ranksweep.speed import (
    PackedCollator,
    causal_lm_parts,
    chunked_causal_lm_loss,
    chunked_eval,
    chunked_loss_forward,
    resolve_kernels,
)
from ranksweep.trial import run_trial

LOSS_RTOL = 1e-5
GRAD_ATOL = 1e-4
RUN_RTOL = 1e-3


def _peft_model(compose_cfg, family: str, bits: int, toy_jsonl, text: bool = False):
    """A tiny model of ``family`` with a LoRA adapter whose B is non-zero, and four rows of varied length."""
    from peft import LoraConfig, get_peft_model

    quant = {4: "nf4", 8: "int8", 16: "none"}[bits]
    over = [f"model=tiny_{family}", f"quant={quant}", "data=jsonl", f"data.path={toy_jsonl}"]
    if text:
        over.append("data.text_column=prompt")
    run = to_run_config(compose_cfg(*over))
    model, tok, _ = load_base(run.model, run.quant, "cpu", os.path.expanduser(run.cache_dir))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    disable_cpu_bf16_repack(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    examples = data_mod.load_examples(run.data)[:4]
    rows = data_mod.tokenize_examples(examples, tok, run.model.variant, run.data, 64, cache_dir=None)
    feats = [rows[i] for i in range(len(rows))]
    assert len({len(f["input_ids"]) for f in feats}) > 1, "the rows must differ in length to test padding"
    return model, tok, feats


def _loss_and_grads(model, batch, fn=None):
    model.zero_grad(set_to_none=True)
    loss = fn(model, batch) if fn else model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    assert lb == pytest.approx(la, rel=LOSS_RTOL)
    assert ga.keys() == gb.keys() and ga
    worst = max(float((ga[k] - gb[k]).abs().max()) for k in ga)
    assert worst < GRAD_ATOL, worst
    assert any(float(g.abs().max()) > 0 for g in ga.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_packing_equals_padding(compose_cfg, toy_jsonl, family):
    model, tok, feats = _peft_model(compose_cfg, family, 16, toy_jsonl)
    model.train()
    padded = data_mod.CausalCollator(tok)(feats)
    packed = PackedCollator(tok)(feats)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum()), "no padding left"
    _assert_same(_loss_and_grads(model, padded), _loss_and_grads(model, packed))


def test_packing_keeps_examples_apart(compose_cfg, toy_jsonl):
    """Changing one example leaves the logits of the others untouched: no attention across examples."""
    model, tok, feats = _peft_model(compose_cfg, "llama", 16, toy_jsonl)
    model.eval()
    packed = PackedCollator(tok)(feats)
    other = [dict(f) for f in feats]
    other[0] = dict(other[0], input_ids=[(t + 1) % 50 for t in other[0]["input_ids"]])
    packed2 = PackedCollator(tok)(other)
    n0 = len(feats[0]["input_ids"])
    with torch.no_grad():
        a = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        b = model(input_ids=packed2["input_ids"], position_ids=packed2["position_ids"]).logits
    assert not torch.allclose(a[:, :n0], b[:, :n0])
    torch.testing.assert_close(a[:, n0:], b[:, n0:], rtol=1e-5, atol=1e-5)


def test_packing_labels_and_positions(compose_cfg, toy_jsonl):
    model, tok, feats = _peft_model(compose_cfg, "llama", 16, toy_jsonl, text=True)
    packed = PackedCollator(tok, flash_kwargs=True)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert [int(packed["position_ids"][0, s]) for s in starts] == [0] * len(starts)
    assert all(int(packed["labels"][0, s]) == -100 for s in starts), "no example predicts the next one's start"
    assert packed["cu_seq_lens_q"].tolist() == starts + [sum(lengths)]
    assert packed["max_length_q"] == max(lengths)
    same = [dict(feats[0]) for _ in range(3)]
    assert "attention_mask" in PackedCollator(tok)(same), "equal lengths: nothing to pack, a plain batch"


@pytest.mark.parametrize(("family", "bits"), [(f, 16) for f in FAMILIES] + [("llama", 4), ("qwen2", 8)])
def test_chunked_loss_equals_model_loss(compose_cfg, toy_jsonl, family, bits):
    """Loss and LoRA gradients of the chunked loss match the model's (gemma2: final logit soft-capping)."""
    model, tok, feats = _peft_model(compose_cfg, family, bits, toy_jsonl)
    model.train()
    batch = data_mod.CausalCollator(tok)(feats)
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    plain = _loss_and_grads(model, batch)
    for chunk, items in ((5, None), (1024, None), (7, n_items)):
        def chunked(m, b, chunk=chunk, items=items):
            return chunked_loss_forward(m, b, items, chunk)[0]

        _assert_same(plain, _loss_and_grads(model, batch, chunked))
    if family == "gemma2":
        assert causal_lm_parts(model)[2], "gemma2's soft-capping is applied"


def test_chunked_loss_on_packed_rows(compose_cfg, toy_jsonl):
    model, tok, feats = _peft_model(compose_cfg, "qwen2", 16, toy_jsonl, text=True)
    model.train()
    plain = _loss_and_grads(model, data_mod.CausalCollator(tok)(feats))
    packed = PackedCollator(tok)(feats)
    _assert_same(plain, _loss_and_grads(model, packed, lambda m, b: chunked_loss_forward(m, b, None, 16)[0]))


def test_chunked_eval_matches_logits(compose_cfg, toy_jsonl):
    model, tok, feats = _peft_model(compose_cfg, "gemma2", 16, toy_jsonl)
    model.eval()
    batch = data_mod.CausalCollator(tok)(feats)
    with torch.no_grad():
        out = model(**batch)
        loss, preds = chunked_loss_forward(model, batch, None, 3, training=False)
    assert float(loss) == pytest.approx(float(out.loss), rel=LOSS_RTOL)
    mask = batch["labels"][:, 1:] != -100
    assert torch.equal(preds[:, :-1][mask], out.logits.argmax(-1)[:, :-1][mask])


def test_chunked_loss_without_labels_is_zero():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    labels = torch.full((2, 5), -100)
    loss = chunked_causal_lm_loss(hidden, torch.randn(11, 8), labels)
    loss.backward()
    assert float(loss) == 0.0 and float(hidden.grad.abs().sum()) == 0.0
    loss, preds = chunked_eval(hidden.detach(), torch.randn(11, 8), labels)
    assert preds.shape == (2, 5)


def _short(compose_cfg, toy_jsonl, *over):
    return compose_cfg("data=jsonl", f"data.path={toy_jsonl}", "trainer.max_steps=8", "trainer.eval_every=8",
                       "data.metric_examples=0", "lora.dropout=0.0", *over)


def test_fast_trial_trains_like_the_plain_trial(compose_cfg, toy_jsonl, tmp_path):
    """Packing + chunked loss vs padded batches + the model's loss: the same run within RUN_RTOL."""
    fast = run_trial(_short(compose_cfg, toy_jsonl), tmp_path / "fast")
    plain = run_trial(_short(compose_cfg, toy_jsonl, "trainer.packing=false", "trainer.loss_impl=plain"),
                      tmp_path / "plain")
    assert fast.metrics["packing"] and fast.metrics["loss_impl"] == "chunked"
    assert fast.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=RUN_RTOL)
    assert fast.metrics["token_accuracy"] == pytest.approx(plain.metrics["token_accuracy"], abs=0.02)
    assert fast.metrics["train_tokens"] == plain.metrics["train_tokens"], "same non-padding tokens seen"


def test_checkpointing_keeps_the_loss(compose_cfg, toy_jsonl, tmp_path):
    on = run_trial(_short(compose_cfg, toy_jsonl, "trainer.gradient_checkpointing=true"), tmp_path / "on")
    off = run_trial(_short(compose_cfg, toy_jsonl, "trainer.gradient_checkpointing=false"), tmp_path / "off")
    assert on.metrics["gradient_checkpointing"] is True and off.metrics["gradient_checkpointing"] is False
    assert on.metrics["eval_loss"] == pytest.approx(off.metrics["eval_loss"], rel=RUN_RTOL)


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_adamw_tracks_adamw(compose_cfg, toy_jsonl, tmp_path, optim):
    """bitsandbytes' 8-bit AdamW (paged or not) trains like fp32 AdamW: eval loss within 2% after 8 steps."""
    ref = run_trial(_short(compose_cfg, toy_jsonl), tmp_path / "ref")
    got = run_trial(_short(compose_cfg, toy_jsonl, f"trainer.optim={optim}"), tmp_path / optim)
    assert got.metrics["optim"] == optim
    assert got.metrics["eval_loss"] == pytest.approx(ref.metrics["eval_loss"], rel=0.02)


def test_checkpointing_auto_decides_by_the_estimate(compose_cfg):
    from ranksweep.memory import HEADROOM, estimate_run

    run = to_run_config(compose_cfg("trainer.dequant_cache=false"))
    roomy = plan_memory(run, "cpu")
    assert roomy.ckpt_layers == 0 and roomy.fits and roomy.limit_gb > 0
    layers = roomy.layers
    assert layers >= 2
    est = {k: estimate_run(run, grad_ckpt=k).total / GB for k in range(layers + 1)}
    assert all(est[k] > est[k + 1] for k in range(layers - 1)), "each checkpointed layer saves memory"
    assert est[layers] > est[layers - 1], "but the last one: it is recomputed at once"
    for k in range(1, layers):  # a budget just above est[k]: exactly k layers recompute
        limit = (est[k] + est[k - 1]) / 2 / HEADROOM
        got = plan_memory(to_run_config(compose_cfg("trainer.dequant_cache=false",
                                                    f"trainer.memory_limit_gb={limit}")), "cpu")
        assert got.ckpt_layers == k and got.fits, (k, got.describe())
    tiny = plan_memory(to_run_config(compose_cfg("trainer.memory_limit_gb=1e-6")), "cpu")
    assert tiny.ckpt_layers == layers - 1 and tiny.dequant_layers == 0 and not tiny.fits
    assert "limit of 0.00 GB" in tiny.describe()
    forced = plan_memory(to_run_config(compose_cfg("trainer.gradient_checkpointing=false",
                                                   f"trainer.memory_limit_gb={est[1]}")), "cpu")
    assert forced.ckpt_layers == 0 and not forced.fits


def test_dequant_cache_goes_first_then_checkpointing(compose_cfg):
    """auto spends the budget on dequantized copies before it turns recomputation off."""
    from ranksweep.memory import HEADROOM, estimate_run

    run = to_run_config(compose_cfg())
    layers = plan_memory(run, "cpu").layers
    roomy = plan_memory(run, "cpu")
    assert roomy.dequant_layers == layers and roomy.ckpt_layers == 0, "plenty of memory: all of both"
    full = estimate_run(run, grad_ckpt=layers - 1, dequant_layers=layers).total / GB
    one_less = estimate_run(run, grad_ckpt=layers - 1, dequant_layers=layers - 1).total / GB
    got = plan_memory(to_run_config(compose_cfg(f"trainer.memory_limit_gb={(full + one_less) / 2 / HEADROOM}")),
                      "cpu")
    assert got.dequant_layers == layers - 1 and got.ckpt_layers == layers - 1 and got.fits
    assert "dequantized weights kept for" in got.describe()
    off = plan_memory(to_run_config(compose_cfg("trainer.dequant_cache=false")), "cpu")
    assert off.dequant_layers == 0
    assert plan_memory(to_run_config(compose_cfg("quant=int8")), "cpu").dequant_layers == 0, "4-bit only"


def test_dequant_cache_gives_the_same_loss_and_gradients(compose_cfg, toy_jsonl):
    from ranksweep.speed import cache_dequantized

    model, tok, feats = _peft_model(compose_cfg, "llama", 4, toy_jsonl)
    model.train()
    batch = data_mod.CausalCollator(tok)(feats)
    plain = _loss_and_grads(model, batch)
    n = len([m for m in model.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "quant_state")])
    assert cache_dequantized(model, 100, torch.float32) > 0
    cached = _loss_and_grads(model, batch)
    _assert_same(plain, cached)
    assert cache_dequantized(model, 0, torch.float32) == 0, "copies dropped"
    assert not any(hasattr(m, "_rs_dequantized") for m in model.modules())
    _assert_same(plain, _loss_and_grads(model, batch))
    del n


def test_partial_checkpointing_keeps_the_loss(compose_cfg, toy_jsonl, tmp_path):
    from ranksweep.memory import HEADROOM, estimate_run

    run = to_run_config(_short(compose_cfg, toy_jsonl, "trainer.dequant_cache=false"))
    limit = (estimate_run(run, grad_ckpt=1).total + estimate_run(run, grad_ckpt=0).total) / 2 / GB / HEADROOM
    part = run_trial(_short(compose_cfg, toy_jsonl, "trainer.dequant_cache=false",
                            f"trainer.memory_limit_gb={limit}"), tmp_path / "part")
    off = run_trial(_short(compose_cfg, toy_jsonl, "trainer.gradient_checkpointing=false"), tmp_path / "off")
    assert part.metrics["checkpointed_layers"] == 1 and off.metrics["checkpointed_layers"] == 0
    assert part.metrics["eval_loss"] == pytest.approx(off.metrics["eval_loss"], rel=RUN_RTOL)


def test_dequant_cache_trains_like_no_cache(compose_cfg, toy_jsonl, tmp_path):
    on = run_trial(_short(compose_cfg, toy_jsonl, "trainer.dequant_cache=true"), tmp_path / "on")
    off = run_trial(_short(compose_cfg, toy_jsonl, "trainer.dequant_cache=false"), tmp_path / "off")
    assert on.metrics["dequant_cached_layers"] > 0 and off.metrics["dequant_cached_layers"] == 0
    assert on.metrics["eval_loss"] == pytest.approx(off.metrics["eval_loss"], rel=RUN_RTOL)


def test_kernels_choice():
    assert resolve_kernels("auto", "cpu") == "none"
    assert resolve_kernels("none", "cuda") == "none"
    with pytest.raises(ConfigError, match=r"^trainer.kernels=liger needs a CUDA device"):
        resolve_kernels("liger", "cpu")


def test_liger_goes_through_training_arguments(compose_cfg, tmp_path):
    """trainer.kernels=liger: the Trainer's own Liger integration (it unwraps peft and patches the family),
    the cross-entropies off (the chunked loss stays); the arguments a CUDA trial would get, built here."""
    import transformers.trainer as hf_trainer

    from ranksweep.trial.trainer import training_arguments

    run = to_run_config(compose_cfg("trainer.kernels=liger", "trainer.device=cuda"))
    args = training_arguments(run, "cuda", tmp_path, kernels="liger")
    assert args.use_liger_kernel is True
    assert args.liger_kernel_config == {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True,
                                        "cross_entropy": False, "fused_linear_cross_entropy": False}
    assert callable(hf_trainer.apply_liger_kernel), "Trainer.train applies it when use_liger_kernel is set"
    plain = training_arguments(run, "cpu", tmp_path)
    assert plain.use_liger_kernel is False and plain.liger_kernel_config is None


def test_liger_on_cpu_is_refused_before_loading(compose_cfg, toy_jsonl, tmp_path):
    from ranksweep.errors import RanksweepError

    for device in ("cpu", "auto"):  # trainer.device=cpu: by the config check; auto on CPU: before any load
        with pytest.raises(RanksweepError) as err:
            run_trial(_short(compose_cfg, toy_jsonl, "trainer.kernels=liger", f"trainer.device={device}"), tmp_path)
        assert str(err.value).startswith("trainer.kernels=liger needs a CUDA device"), device
        assert not (tmp_path / "metrics.json").exists()


def test_packing_is_transformers_flattening_collator(compose_cfg, toy_jsonl):
    from transformers import DataCollatorWithFlattening

    from ranksweep.speed import packing_collator

    model, tok, feats = _peft_model(compose_cfg, "llama", 16, toy_jsonl)
    collator = packing_collator(tok, model)
    assert isinstance(collator.flatten, DataCollatorWithFlattening) and not collator.flash_kwargs
    model.config._attn_implementation = "flash_attention_2"  # FlashAttention on: its boundaries go along
    assert packing_collator(tok, model).flash_kwargs
    model.config._attn_implementation = "sdpa"


@pytest.mark.slow
def test_compiled_decoder_keeps_the_loss(compose_cfg, toy_jsonl, tmp_path):
    """trainer.compile=true (off by default: it did not pay in bench/RESULTS.md) trains the same run;
    a cold Inductor compile of the tiny model takes about 1.5 min on 2 cores."""
    on = run_trial(_short(compose_cfg, toy_jsonl, "trainer.compile=true"), tmp_path / "on")
    off = run_trial(_short(compose_cfg, toy_jsonl), tmp_path / "off")
    assert on.metrics["eval_loss"] == pytest.approx(off.metrics["eval_loss"], rel=RUN_RTOL)
