"""Nested ranks (``ranksweep.trial.nested``) on real peft adapters over the tiny random-init Llama.

The base comes from ranksweep's own loader (4-bit NF4 and 8-bit through bitsandbytes' CPU kernels, or 16-bit)
and the adapter from ranksweep's ``add_lora``; its A and B are filled with random values, so that every
component changes the logits (peft starts B at zero, which would make every prefix look the same).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import TINY_RUN, compose
from safetensors.torch import load_file

from ranksweep.config import to_run_config
from ranksweep.models import disable_cpu_bf16_repack, load_base
from ranksweep.targets import resolve_targets
from ranksweep.trial.adapter import add_lora
from ranksweep.trial.nested import (
    NestedRankCallback,
    RankSampler,
    is_nested,
    nest,
    prefix,
    rule_alpha,
    rule_scale,
    save_prefix,
    set_prefix,
    truncate_state_dict,
    unnest,
)

TOP = 8
LADDER = (1, 2, 4, 8)


def tiny_run(quant: str = "nf4", rule: str = "fixed", r: int = TOP):
    """The tiny Llama's run config (float32 on CPU), without LoRA dropout: logits are deterministic."""
    return to_run_config(compose(*TINY_RUN, f"quant={quant}", f"lora.alpha_rule={rule}", f"lora.r={r}",
                                 "lora.dropout=0", "lora.targets=all_linear"))


def load(run):
    base, _, _ = load_base(run.model, run.quant, "cpu", os.environ["RANKSWEEP_CACHE"])
    return base


def adapted(run, seed: int = 0):
    """A fresh adapter on a fresh base, every LoRA weight random (seeded)."""
    base = load(run)
    model = add_lora(base, run, resolve_targets(base, run.model.family, run.lora.targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def lora_layers(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def batch(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(6, 100, (2, 16), generator=gen)


@torch.no_grad()
def logits(model, ids) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("quant, rule", [("nf4", "fixed"), ("nf4", "rslora"), ("nf4", "two_r"), ("int8", "fixed"),
                                         ("none", "fixed")])
def test_prefix_b_is_the_plain_rank_b_adapter_of_its_first_components(quant, rule, tmp_path):
    """Prefix b of a rank-8 adapter gives the logits of an ordinary peft adapter with r=b built from its first b
    components (saved, reloaded by peft), with the alpha the rule gives rank b, for every b of the ladder."""
    from peft import PeftModel

    run = tiny_run(quant, rule)
    model = adapted(run)
    assert nest(model, rule_scale(run.lora)) == 14  # 2 layers x 7 projections
    ids = batch()
    full = logits(model, ids)
    nested = {}
    for b in LADDER:
        with prefix(model, b):
            nested[b] = logits(model, ids)
        save_prefix(model, tmp_path / f"r{b}", b, lora_alpha=rule_alpha(run.lora, b))
    assert torch.equal(logits(model, ids), full), "the full rank is back after the context"
    assert torch.equal(nested[TOP], full)
    for b in LADDER[:-1]:  # each component matters: no two prefixes agree
        assert (nested[b] - nested[b * 2]).abs().max() > 1e-2, b

    unnest(model)
    base = model.unload()
    for b in LADDER:
        plain = PeftModel.from_pretrained(base, str(tmp_path / f"r{b}"))
        disable_cpu_bf16_repack(plain)
        assert not is_nested(plain)
        cfg = plain.peft_config["default"]
        assert (cfg.r, cfg.lora_alpha, cfg.use_rslora) == (b, rule_alpha(run.lora, b), rule == "rslora")
        layers = lora_layers(plain)
        assert layers and all(m.lora_A["default"].weight.shape[0] == b for m in layers.values())
        want = nested[b]
        got = logits(plain, ids)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (b, (got - want).abs().max().item())
        base = plain.unload()


def test_the_nested_adapter_saves_as_a_plain_peft_adapter(tmp_path):
    """With the hooks on and a prefix set, save_pretrained writes the same files, keys, tensors and config as the
    same adapter without them; peft reloads it, unhooked, with the full-rank logits."""
    from peft import PeftModel

    run = tiny_run()
    model = adapted(run)
    keys = list(model.state_dict())
    model.save_pretrained(str(tmp_path / "plain"))

    nest(model, rule_scale(run.lora))
    set_prefix(model, 2)
    model.train()
    model(input_ids=batch(), labels=batch()).loss.backward()  # a prefix step has run through the hooks
    assert list(model.state_dict()) == keys
    model.save_pretrained(str(tmp_path / "nested"))

    plain, nested = tmp_path / "plain", tmp_path / "nested"
    assert sorted(p.name for p in nested.iterdir()) == sorted(p.name for p in plain.iterdir())
    config = json.loads((nested / "adapter_config.json").read_text())
    assert config == json.loads((plain / "adapter_config.json").read_text())
    assert config["r"] == TOP and config["lora_alpha"] == run.lora.lora_alpha
    a, b = load_file(str(nested / "adapter_model.safetensors")), load_file(str(plain / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 2 * 14
    assert all(torch.equal(a[k], b[k]) for k in a), "all 8 components are saved, whatever the prefix"
    assert all(t.shape[0 if ".lora_A." in k else 1] == TOP for k, t in a.items())

    set_prefix(model, None)
    full = logits(model, batch(2))
    reloaded = PeftModel.from_pretrained(load(run), str(nested))
    disable_cpu_bf16_repack(reloaded)
    assert not is_nested(reloaded)
    assert all(not m.lora_A["default"]._forward_hooks for m in lora_layers(reloaded).values())
    assert torch.allclose(logits(reloaded, batch(2)), full, rtol=1e-5, atol=1e-5)

    # save_prefix at the top rank is that same adapter.
    top = load_file(str(save_prefix(model, tmp_path / "top", TOP) / "adapter_model.safetensors"))
    assert top.keys() == b.keys() and all(torch.equal(top[k], b[k]) for k in b)

    assert unnest(model) == 14 and not is_nested(model)
    assert all(not m.lora_A["default"]._forward_hooks for m in lora_layers(model).values())


def test_a_prefix_step_trains_only_the_first_b_components_and_the_context_restores_the_full_rank():
    run = tiny_run(rule="two_r")
    model = adapted(run)
    layers = lora_layers(model)
    scaling = {n: m.scaling["default"] for n, m in layers.items()}
    assert set(scaling.values()) == {2.0}  # two_r: alpha = 2r
    nest(model, rule_scale(run.lora))
    ids = batch()
    full = logits(model, ids)

    model.train()
    with prefix(model, 4):
        assert all(m.scaling["default"] == 2.0 for m in layers.values())  # alpha = 2b: the same scale
        with prefix(model, 2):  # contexts nest: the inner one gives back 4, not the full rank
            model(input_ids=ids, labels=ids).loss.backward()
        assert all(st.b == 4 for st in (m.__dict__["_ranksweep_nested"] for m in layers.values()))
    for name, m in layers.items():
        ga, gb = m.lora_A["default"].weight.grad, m.lora_B["default"].weight.grad
        assert torch.count_nonzero(ga[2:]) == 0 and torch.count_nonzero(gb[:, 2:]) == 0, name
        assert torch.count_nonzero(ga[:2]) > 0 and torch.count_nonzero(gb[:, :2]) > 0, name
    assert {n: m.scaling["default"] for n, m in layers.items()} == scaling
    assert torch.equal(logits(model, ids), full)

    with pytest.raises(RuntimeError, match="inside"), prefix(model, 1):
        raise RuntimeError("inside")
    assert torch.equal(logits(model, ids), full), "an exception in the context still restores the full rank"

    for bad in (0, TOP + 1, 2.0, True):
        with pytest.raises(ValueError, match="prefix rank must be an integer from 1 to the adapter's rank 8"):
            set_prefix(model, bad)
    with pytest.raises(ValueError, match="nested already"):
        nest(model)
    unnest(model)
    with pytest.raises(ValueError, match="not nested"):
        set_prefix(model, 2)


def test_the_scale_of_a_prefix_follows_the_alpha_rule():
    """fixed: alpha/b; rslora: alpha/sqrt(b); two_r: 2 at every b; an (alpha, rslora) pair or peft's own alpha."""
    run = tiny_run("none")
    model = adapted(run)
    layers = list(lora_layers(model).values())
    for scale, want in ((None, 16 / 2), ((16.0, True), 16 / 2**0.5), ((6.0, False), 3.0),
                        (rule_scale(tiny_run("none", "two_r").lora), 2.0)):
        nest(model, scale)
        with prefix(model, 2):
            assert all(m.scaling["default"] == pytest.approx(want) for m in layers), scale
        assert all(m.scaling["default"] == 16 / TOP for m in layers)
        unnest(model)


def test_a_trainer_with_the_callback_moves_only_the_sampled_prefixes(tmp_path):
    """A real Trainer, ladder (2, 4) on a rank-8 adapter, 2 micro-batches an optimizer step: one draw per step,
    reproducible from the seed; components from 4 on never move, the first two always do; full rank after."""
    from transformers import Trainer, TrainingArguments

    run = tiny_run("none")
    model = adapted(run)
    layers = lora_layers(model)
    before = {n: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
              for n, m in layers.items()}
    nest(model, rule_scale(run.lora))
    gen = torch.Generator().manual_seed(3)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(6, 100, (16, 12), generator=gen)]
    steps = 5
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=1e-2, weight_decay=0.0, use_cpu=True,
                             report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             remove_unused_columns=False, seed=0)
    callback = NestedRankCallback(RankSampler([4, 2], seed=11))
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()

    again = RankSampler((2, 4), seed=11)
    assert callback.drawn == [again.draw() for _ in range(steps)]
    assert set(callback.drawn) <= {2, 4}
    for name, m in layers.items():
        a0, b0 = before[name]
        a, b = m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach()
        assert torch.equal(a[4:], a0[4:]) and torch.equal(b[:, 4:], b0[:, 4:]), name
        assert not torch.equal(a[:2], a0[:2]) and not torch.equal(b[:, :2], b0[:, :2]), name
        assert m.scaling["default"] == 16 / TOP and m.__dict__["_ranksweep_nested"].b is None


def test_the_sampler_draws_only_ladder_ranks_reproducibly():
    a, b, c = RankSampler(LADDER, seed=7), RankSampler(list(reversed(LADDER)), seed=7), RankSampler(LADDER, seed=8)
    seq_a = [a.draw() for _ in range(400)]
    assert seq_a == [b.draw() for _ in range(400)], "the same seed and ladder, in any order: the same draws"
    assert seq_a != [c.draw() for _ in range(400)]
    assert set(seq_a) == set(LADDER)
    assert min(seq_a.count(r) for r in LADDER) > 60  # uniform over the ladder: ~100 each
    for bad in ([], [0, 2], [2, 2.5], [True]):
        with pytest.raises(ValueError, match="ranks must be positive integers"):
            RankSampler(bad)



def test_a_resumed_run_goes_on_with_the_draws_of_an_uninterrupted_one():
    """A Trainer resumed at step 3 calls on_train_begin with global_step=3: the callback replays (and counts)
    the 3 draws the checkpoint's steps made, so step 4 draws what it would have drawn without the break."""
    from types import SimpleNamespace

    whole = RankSampler(LADDER, seed=5)
    want = [whole.draw() for _ in range(6)]
    resumed = NestedRankCallback(RankSampler(LADDER, seed=5))
    resumed.on_train_begin(None, SimpleNamespace(global_step=3), None)
    assert resumed.drawn == want[:3]
    assert [resumed.sampler.draw() for _ in range(3)] == want[3:]
    fresh = NestedRankCallback(RankSampler(LADDER, seed=5))
    fresh.on_train_begin(None, SimpleNamespace(global_step=0), None)
    fresh.catch_up(2)  # a run restored at its last step (no training): its draws, for the counts
    assert fresh.drawn == want[:2]

def test_truncate_state_dict_takes_rows_of_a_and_columns_of_b():
    a, b, bias = torch.randn(8, 128), torch.randn(384, 8), torch.randn(384)
    sd = {"m.q_proj.lora_A.weight": a, "m.q_proj.lora_B.weight": b, "m.q_proj.lora_B.bias": bias,
          "m.q_proj.lora_A.default.weight": a.clone()}
    out = truncate_state_dict(sd, 3)
    assert torch.equal(out["m.q_proj.lora_A.weight"], a[:3]) and torch.equal(out["m.q_proj.lora_B.weight"], b[:, :3])
    assert torch.equal(out["m.q_proj.lora_A.default.weight"], a[:3])
    assert torch.equal(out["m.q_proj.lora_B.bias"], bias)
    assert all(t.is_contiguous() for t in out.values())
    assert out["m.q_proj.lora_A.weight"].data_ptr() != a.data_ptr(), "a copy, not a view of the adapter"
    with pytest.raises(ValueError, match="rank 8 has no prefix of 9 components"):
        truncate_state_dict(sd, 9)
    with pytest.raises(ValueError, match="no lora_A / lora_B weights"):
        truncate_state_dict({"w": a}, 2)


def test_nest_refuses_what_a_rank_mask_cannot_restrict():
    """DoRA's magnitude depends on the whole update: a mask on A's output would not give a rank-b DoRA."""
    from peft import LoraConfig, get_peft_model

    base = load(tiny_run("none"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match=r"q_proj: nested ranks support plain LoRA on linear layers, not Linear with"):
        nest(model)
    assert not is_nested(model)
    with pytest.raises(ValueError, match="no LoRA layer of adapter 'other'"):
        nest(model, adapter="other")


# --------------------------------------------------------------------------- the prescreen job (trial.nested_ranks)

PRESCREEN_RUN = ("data=jsonl", "data.max_examples=48", "data.eval_size=8", "data.metric_examples=2", "lora.r=4",
                 "trainer.max_steps=4", "trainer.eval_every=2", "trainer.micro_batch=4", "trial.nested_ranks=[1,2,4]",
                 "trial.role=prescreen")


def test_a_prescreen_job_evaluates_every_prefix_out_of_the_sweepers_sight(compose_cfg, toy_jsonl, tmp_path,
                                                                            monkeypatch):
    """A real job on a real Optuna trial: nested ranks (1, 2, 4) on a rank-4 adapter, 4 steps. Every prefix is
    evaluated on the eval examples the trial's own evaluation used; the rank-4 prefix is that evaluation; the
    sweeper got the two ordinary evaluations only (intermediate values, W&B rows); the saved adapter and the
    reused base are plain."""
    import optuna

    from ranksweep.job import _BASE, _LazyReporter, run_job
    from ranksweep.tracking import Tracker

    reported, logged, summary = [], [], {}
    report, log, summarize = _LazyReporter.report, Tracker.log, Tracker.summary
    monkeypatch.setattr(_LazyReporter, "report", lambda self, s, v: (reported.append((s, v)), report(self, s, v)))
    monkeypatch.setattr(Tracker, "log", lambda self, d, step=None: (logged.append((step, d)), log(self, d, step)))
    monkeypatch.setattr(Tracker, "summary", lambda self, d: (summary.update(d), summarize(self, d)))
    url = f"sqlite:///{tmp_path / 's.db'}"
    trial = optuna.create_study(study_name="s", storage=url).ask()
    run = to_run_config(compose_cfg(*PRESCREEN_RUN, f"data.path={toy_jsonl}", f"trial.storage={url}",
                                    "trial.study_name=s", f"trial.trial_number={trial.number}"))
    out = tmp_path / "job"
    objective = run_job(run, str(out))

    m = json.loads((out / "metrics.json").read_text())
    pre, full = m["prescreen"], m["eval_examples"]
    assert objective == m["eval_loss"] and m["steps"] == 4
    assert pre["ranks"] == [1, 2, 4] and set(pre["prefixes"]) == {"1", "2", "4"}
    assert set(pre["drawn"]) == {"1", "2", "4"} and sum(pre["drawn"].values()) == 4
    sampler = RankSampler([1, 2, 4], seed=run.trainer.seed)
    draws = [sampler.draw() for _ in range(4)]  # one draw per optimizer step, seeded by trainer.seed
    assert pre["drawn"] == {str(b): draws.count(b) for b in (1, 2, 4)}
    for b, p in pre["prefixes"].items():
        assert set(p) == {"value", "eval_loss", "loss", "tokens", "correct", "fingerprint", "n"}, b
        assert p["fingerprint"] == full["fingerprint"] and p["n"] == full["n"] == 8, b
        assert len(p["loss"]) == 8 and p["tokens"] == full["tokens"], b
        assert len(p["correct"]) == len(full["correct"]) == 2 and set(p["correct"]) <= {0.0, 1.0}, b
        assert p["value"] == p["eval_loss"], b  # objective=eval_loss
        tokens = sum(p["tokens"])
        assert p["eval_loss"] == pytest.approx(sum(p["loss"]) / tokens, rel=1e-5), b
    top = pre["prefixes"]["4"]
    assert top["eval_loss"] == pytest.approx(m["eval_loss"], abs=1e-5)
    assert top["loss"] == pytest.approx(full["loss"], abs=1e-5)
    assert pre["prefixes"]["1"]["eval_loss"] != pytest.approx(m["eval_loss"], abs=1e-6), "prefix 1 is not rank 4"

    # The sweeper saw the trial's evaluations only: steps 2 and 4, at the full rank; so did W&B.
    assert [s for s, _ in reported] == [2, 4] and reported[-1][1] == pytest.approx(m["eval_loss"], rel=1e-12)
    (stored,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert stored.intermediate_values == dict(reported)
    assert [s for s, row in logged if "eval/loss" in row] == [2, 4]
    assert stored.user_attrs["prescreen"] == pre and stored.user_attrs["eval_loss"] == m["eval_loss"]
    assert summary["prescreen/eval_loss_r4"] == top["eval_loss"] and summary["prescreen/value_r1"] == \
        pre["prefixes"]["1"]["value"] and sum(summary[f"prescreen/drawn_r{b}"] for b in (1, 2, 4)) == 4

    # A plain rank-4 peft adapter, all 4 components; the worker's base is given back without LoRA or hooks.
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"]) == (4, 16, {})
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert len(weights) == 2 * 14 and all(t.shape[0 if ".lora_A." in k else 1] == 4 for k, t in weights.items())
    ((base, _),) = _BASE.values()
    assert not any("lora" in n or "_ranksweep_nested" in m_.__dict__ for n, m_ in base.named_modules())


def test_a_model_nest_refuses_fails_the_trial_naming_the_prescreen(compose_cfg, toy_jsonl, tmp_path, monkeypatch):
    """DoRA (as a model whose adapter nest() cannot restrict): the trial fails before training, in one line
    naming hydra.sweeper.prescreen, and the reused base is given back without the adapter."""
    import functools

    from peft import LoraConfig

    from ranksweep.errors import TrialFailed, describe_failure
    from ranksweep.trial import adapter as adapter_mod
    from ranksweep.trial import run_trial

    monkeypatch.setattr(adapter_mod, "LoraConfig", functools.partial(LoraConfig, use_dora=True))
    run = to_run_config(compose_cfg(*PRESCREEN_RUN, f"data.path={toy_jsonl}"))
    base, tok, _ = load_base(run.model, run.quant, "cpu", run.cache_dir)
    with pytest.raises(TrialFailed) as err:
        run_trial(run, tmp_path, base_loader=lambda: (base, tok))
    line, code = describe_failure(err.value)
    assert err.value.kind == "prescreen" and code == 1
    assert line.startswith("trial failed (prescreen): hydra.sweeper.prescreen=nested (trial.nested_ranks=[1, 2, 4]) "
                           "trains plain LoRA on linear layers only: ")
    assert "with a LoRA variant (DoRA...)" in line and "\n" not in line
    assert not (tmp_path / "metrics.json").exists()
    assert not any("lora" in n for n, _ in base.named_modules()) and "peft_config" not in base.__dict__


@pytest.mark.parametrize("ranks, r, says", [
    ("[1,2]", 4, "trial.nested_ranks=[1, 2] must include lora.r=4: the full rank is a prefix too"),
    ("[0,4]", 4, "trial.nested_ranks must be distinct positive integers, got [0, 4]"),
    ("[2,2,4]", 4, "trial.nested_ranks must be distinct positive integers, got [2, 2, 4]"),
    ("[1,2,8]", 4, "trial.nested_ranks=[1, 2, 8] has a rank above lora.r=4: a rank-4 adapter has no prefix of more "
                   "than 4 components"),
])
def test_bad_nested_ranks_are_config_errors_naming_the_key(compose_cfg, ranks, r, says):
    from ranksweep.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        to_run_config(compose_cfg(f"trial.nested_ranks={ranks}", f"lora.r={r}"))
    assert str(err.value) == says


def test_nested_ranks_config_defaults_and_order():
    run = to_run_config(compose(*TINY_RUN, "lora.r=8", "trial.nested_ranks=[8,2,4]", "trial.role=prescreen"))
    assert run.trial.nested_ranks == [8, 2, 4] and run.trial.role == "prescreen"  # distinct, in any order
    assert to_run_config(compose(*TINY_RUN)).trial.nested_ranks == []
