"""One QLoRA trial: quantized base, fresh LoRA adapter, Trainer, evaluation, artefacts.

:func:`run_trial` is a plain function of a composed config; the ``ranksweep``
command and the sweeper both call it. It writes into ``out_dir``:

- ``adapter/``: the LoRA adapter in PEFT format (safetensors);
- ``config.yaml``: the resolved config;
- ``metrics.json``: eval metrics, trainable params, peak memory, tokens/s, wall time;
- ``wandb/``: the offline W&B run (when ``logger=wandb``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ranksweep import data as data_mod
from ranksweep.config import OPTIMS, RunConfig, to_run_config
from ranksweep.errors import TrialFailed
from ranksweep.models import disable_cpu_bf16_repack, load_base, pick_device, torch_dtype
from ranksweep.targets import resolve_targets
from ranksweep.tracking import Tracker, run_label

log = logging.getLogger("ranksweep")
# transformers 5 renames gradient_checkpointing; peft still calls the old names on every trial.
warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)


class Reporter(Protocol):
    """What a sweeper hands a trial: intermediate values in, a prune decision out."""

    def report(self, step: int, value: float) -> None: ...

    def should_prune(self) -> bool: ...


class TrialPruned(Exception):
    """Raised inside a trial that its sweeper decided to prune."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"pruned at step {step} (eval {value:.4f})")
        self.step = step
        self.value = value

    def __reduce__(self):  # out-of-process launchers (submitit, joblib) pickle a job's exception
        return (type(self), (self.step, self.value))


@dataclass
class TrialResult:
    objective: float
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""


def _peak_memory_gb(device: str) -> tuple[float, str]:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9, "cuda_max_allocated"
    # ru_maxrss is KiB on Linux: the process's peak resident set, the CPU analogue.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "cpu_max_rss"


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _trainer_callbacks(tracker: Tracker, reporter: Optional[Reporter]):
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        """Logs to W&B and the console, stops on NaN, and reports to the sweeper."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.eval_s = 0.0
            self.last_eval: Optional[tuple[int, dict]] = None
            self.last_tokens = 0
            self.last_t = self.t0

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if "loss" in logs:
                loss = float(logs["loss"])
                if not math.isfinite(loss):
                    raise TrialFailed(f"non-finite training loss {loss} at step {state.global_step}", kind="nan")
                now = time.perf_counter()
                seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
                tps = (seen - self.last_tokens) / max(now - self.last_t, 1e-9)
                self.last_tokens, self.last_t = seen, now
                row = {"train/loss": loss, "train/lr": float(logs.get("learning_rate", 0.0)),
                       "train/tokens_per_s": tps, "train/tokens": seen}
                if "grad_norm" in logs:
                    row["train/grad_norm"] = float(logs["grad_norm"])
                tracker.log(row, step=state.global_step)
                log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", state.global_step, state.max_steps,
                         loss, row["train/lr"], tps)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = metrics or {}
            if "eval_loss" not in metrics:
                return
            self.eval_s += float(metrics.get("eval_runtime", 0.0))
            self.last_eval = (state.global_step, dict(metrics))
            loss = float(metrics["eval_loss"])
            if not math.isfinite(loss):
                raise TrialFailed(f"non-finite eval loss {loss} at step {state.global_step}", kind="nan")
            row = {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50))}
            if "eval_token_accuracy" in metrics:
                row["eval/token_accuracy"] = float(metrics["eval_token_accuracy"])
            tracker.log(row, step=state.global_step)
            log.info("step %d/%d  eval loss %.4f", state.global_step, state.max_steps, loss)
            if reporter is not None and state.global_step > 0:
                # Intermediate values are eval losses (lower is better), whatever the objective.
                reporter.report(state.global_step, loss)
                if reporter.should_prune():
                    raise TrialPruned(state.global_step, loss)

    return [Watch()]


def _argmax_logits(logits, labels):
    """Keep only the predicted ids: the Trainer then never gathers [batch, seq, vocab] logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits if logits.dim() == 2 else logits.argmax(dim=-1)  # the chunked eval returns ids


def _trainer_class():
    """transformers' Trainer with ranksweep's loss and a separate (padded) evaluation collator."""
    from transformers import Trainer

    from ranksweep.speed import chunked_loss_forward

    class RanksweepTrainer(Trainer):
        def __init__(self, *args, eval_collator=None, chunked: bool = False, ce_chunk: int = 1024, **kwargs):
            super().__init__(*args, **kwargs)
            self.eval_collator = eval_collator
            self.chunked = chunked
            self.ce_chunk = ce_chunk

        def floating_point_ops(self, inputs):
            # Trainer counts FLOPs for its logs by walking every parameter on every step; once is enough.
            if not hasattr(self, "_n_params"):
                self._n_params = self.model.num_parameters(exclude_embeddings=True)
            ids = inputs.get("input_ids")
            return 6 * self._n_params * (ids.numel() if ids is not None else 0)

        def get_eval_dataloader(self, eval_dataset=None):
            # Evaluation stays padded: its loss is a mean over batches weighted by rows, as before.
            if self.eval_collator is None:
                return super().get_eval_dataloader(eval_dataset)
            train_collator, self.data_collator = self.data_collator, self.eval_collator
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = train_collator

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.chunked and self.label_smoother is None and self.compute_loss_func is None:
                items = num_items_in_batch if self.model_accepts_loss_kwargs else None
                got = chunked_loss_forward(model, inputs, items, self.ce_chunk, training=model.training)
                if got is not None:
                    loss, preds = got
                    if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                            and num_items_in_batch is not None):
                        loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does
                    if return_outputs:
                        return loss, {"loss": loss, "logits": preds}
                    return loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return RanksweepTrainer


def _token_accuracy(eval_pred) -> dict[str, float]:
    """Next-token accuracy on response tokens: informative long before exact match moves off 0."""

    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds, labels = preds[:, :-1], labels[:, 1:]
    mask = labels != -100
    return {"token_accuracy": float((preds == labels)[mask].mean()) if mask.any() else float("nan")}


@torch.no_grad()
def generate_exact_match(model, tokenizer, examples, n: int, max_new_tokens: int, batch: int, device: str):
    """Greedy-decode the first ``n`` eval prompts and score exact match against the references."""
    n = min(n, len(examples))
    if n == 0:
        return None, []
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    preds: list[str] = []
    for start in range(0, n, batch):
        rows = [examples[i] for i in range(start, min(start + batch, n))]
        width = max(len(r["prompt_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding for generation
            p = torch.tensor(r["prompt_ids"], dtype=torch.long)
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row in out[:, width:]:
            preds.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    refs = [examples[i]["response"] for i in range(n)]
    return data_mod.exact_match(preds, refs), list(zip(refs, preds))


def _objective(run: RunConfig, metrics: dict[str, Any]) -> float:
    if run.objective == "eval_loss":
        return float(metrics["eval_loss"])
    if run.objective == "perplexity":
        return float(metrics["perplexity"])
    return float(metrics["exact_match"])


def run_trial(cfg: DictConfig | dict, out_dir: str | os.PathLike, reporter: Optional[Reporter] = None,
              base_loader: Optional[Callable[[], Optional[tuple]]] = None,
              callbacks: Sequence[Any] = ()) -> TrialResult:
    """Train and evaluate one adapter; return the objective and metrics.

    ``base_loader`` optionally returns ``(model, tokenizer)`` already loaded
    (a worker reuses one quantized base across its trials); it is called after
    the data loaded, so a bad dataset fails before any model load. ``callbacks`` are extra
    transformers ``TrainerCallback`` objects (the benchmark times steps with one).
    """
    t_start = time.perf_counter()
    run = to_run_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True) if not isinstance(cfg, dict) else cfg
    device = pick_device(run.trainer.device)
    cache_dir = os.path.expanduser(run.cache_dir)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Data first: a bad dataset fails in a second, before any model load.
    examples = data_mod.load_examples(run.data)
    train_ex, eval_ex = data_mod.split_examples(examples, run.data.eval_size, run.data.seed)
    # peft and the Trainer take seconds to import: only after the data is known to be good.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import TrainingArguments, set_seed

    t_load = time.perf_counter()
    base = base_loader() if base_loader is not None else None
    if base is None:
        model, tok, _ = load_base(run.model, run.quant, device, cache_dir)
    else:
        model, tok = base
    load_s = time.perf_counter() - t_load
    modules = resolve_targets(model, run.model.family, run.lora.targets)

    train_ds = data_mod.tokenize_examples(train_ex, tok, run.model.variant, run.data, run.trainer.max_seq_len,
                                          cache_dir=os.path.join(cache_dir, "data"))
    eval_ds = data_mod.tokenize_examples(eval_ex, tok, run.model.variant, run.data, run.trainer.max_seq_len,
                                         cache_dir=os.path.join(cache_dir, "data"))

    from ranksweep.memory import plan_memory
    from ranksweep.speed import apply_kernels, cache_dequantized, checkpoint_layers, packing_collator, resolve_kernels

    mem = plan_memory(run, device, config=model.config)
    ckpt = mem.grad_ckpt
    log.info("memory: %s", mem.describe())
    patched = apply_kernels(model, run.model.family, resolve_kernels(run.trainer.kernels, device))
    kernels = "liger" if patched else "none"
    if run.quant.bits == 4:  # also drops copies a previous trial on this base kept
        cache_dequantized(model, mem.dequant_layers, torch_dtype(run.quant.compute_dtype, device))

    set_seed(run.trainer.seed)
    if run.quant.bits in (4, 8):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if not ckpt and getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # a reused base may come from a checkpointed trial
    if ckpt and mem.ckpt_layers < mem.layers:
        checkpoint_layers(model, mem.ckpt_layers)
    lora_cfg = LoraConfig(
        r=run.lora.r, lora_alpha=run.lora.lora_alpha, lora_dropout=run.lora.dropout, bias=run.lora.bias,
        target_modules=modules, use_rslora=run.lora.use_rslora, task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_cfg)
    disable_cpu_bf16_repack(model)
    compiled = None
    if run.trainer.compile:  # the decoder, which both loss paths call; compiled lazily on the first step
        from ranksweep.speed import causal_lm_parts

        parts = causal_lm_parts(model)
        compiled = parts[0] if parts else model
        compiled.compile()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    if reporter is not None and hasattr(reporter, "set_attrs"):
        reporter.set_attrs({"alpha": run.lora.lora_alpha, "trainable_params": trainable, "target_modules": modules})
    tracker = Tracker(run.logger, run, resolved, str(out))
    if reporter is not None and hasattr(reporter, "set_attrs") and tracker.run_path:
        reporter.set_attrs({"wandb_run": tracker.run_path})  # known now: pruned and failed runs have one too
    name = run_label(run)
    log.info("trial %s: %s on %s, %d-bit, %d trainable params (%.3f%%), %d train / %d eval examples",
             name, run.model.name, device, run.quant.bits, trainable, 100 * trainable / max(total, 1),
             len(train_ds), len(eval_ds))
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=run.trainer.max_steps,
        per_device_train_batch_size=run.trainer.micro_batch,
        per_device_eval_batch_size=run.trainer.eval_batch,
        gradient_accumulation_steps=run.trainer.grad_accum,
        learning_rate=run.trainer.lr,
        lr_scheduler_type=run.trainer.schedule,
        warmup_steps=run.trainer.warmup_ratio,
        weight_decay=run.trainer.weight_decay,
        eval_strategy="steps" if run.trainer.max_steps > 0 else "no",
        eval_steps=run.trainer.eval_every,
        logging_steps=run.trainer.log_every,
        save_strategy="no",
        report_to="none",
        seed=run.trainer.seed,
        data_seed=run.trainer.seed,
        use_cpu=device == "cpu",
        bf16=torch_dtype(run.quant.compute_dtype, device) == torch.bfloat16 and device == "cuda",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_pin_memory=device == "cuda",
        optim=OPTIMS[run.trainer.optim][0],
        gradient_checkpointing=False,  # enabled above, before peft wraps the model
    )
    if run.trainer.packing:
        args.include_num_input_tokens_seen = "all"  # packed rows have no padding to leave out
    watch = _trainer_callbacks(tracker, reporter)[0]
    padded = data_mod.CausalCollator(tok)
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=packing_collator(tok, model) if run.trainer.packing else padded,
        eval_collator=padded, chunked=run.trainer.loss_impl == "chunked", ce_chunk=run.trainer.ce_chunk,
        callbacks=[watch, *callbacks], compute_metrics=_token_accuracy, preprocess_logits_for_metrics=_argmax_logits,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback logs one line per interval instead
    exit_code = 1
    try:
        train_s, tokens = 0.0, 0
        setup_s = time.perf_counter() - t_start  # start, data, load (or reuse), tokenise, adapter, Trainer
        if run.trainer.max_steps > 0:
            t_train = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - t_train
            tokens = int(trainer.state.num_input_tokens_seen or 0)
        train_s -= watch.eval_s  # tokens/s counts training time only
        if watch.last_eval is not None and watch.last_eval[0] == trainer.state.global_step:
            eval_metrics = watch.last_eval[1]  # the last periodic eval was at the final step
        else:
            eval_metrics = trainer.evaluate()
        eval_loss = float(eval_metrics["eval_loss"])
        if not math.isfinite(eval_loss):
            raise TrialFailed(f"non-finite eval loss {eval_loss}", kind="nan")
        metrics: dict[str, Any] = {
            "eval_loss": eval_loss,
            "perplexity": math.exp(min(eval_loss, 50)),
            "token_accuracy": float(eval_metrics.get("eval_token_accuracy", float("nan"))),
            "trainable_params": trainable,
            "total_params": total,
            "target_modules": modules,
            "r": run.lora.r,
            "alpha": run.lora.lora_alpha,
            "steps": int(trainer.state.global_step),
            "train_tokens": tokens,
            "tokens_per_s": tokens / train_s if train_s > 0 else 0.0,
            "train_s": train_s,
            "load_s": load_s,
            "device": device,
            "gradient_checkpointing": ckpt,
            "checkpointed_layers": mem.ckpt_layers if ckpt else 0,
            "dequant_cached_layers": mem.dequant_layers,
            "packing": run.trainer.packing,
            "loss_impl": run.trainer.loss_impl,
            "kernels": kernels,
            "optim": run.trainer.optim,
            "estimated_peak_gb": mem.estimate.total / 1e9 if mem.estimate is not None else None,
            "name": name,
        }
        if run.data.metric == "exact_match" and run.data.metric_examples > 0:
            em, samples = generate_exact_match(model, tok, eval_ds, run.data.metric_examples,
                                               run.data.max_new_tokens, run.trainer.eval_batch, device)
            metrics["exact_match"] = em
            metrics["exact_match_n"] = min(run.data.metric_examples, len(eval_ds))
            metrics["samples"] = [{"reference": r, "prediction": p} for r, p in samples[:5]]
        t_finish = time.perf_counter()
        model.save_pretrained(out / "adapter", safe_serialization=True)
        OmegaConf.save(OmegaConf.create(resolved), out / "config.yaml")
        metrics["peak_mem_gb"], metrics["peak_mem_kind"] = _peak_memory_gb(device)
        metrics["wall_s"] = time.perf_counter() - t_start
        # What a trial spends outside training and evaluation: its overhead.
        metrics["overhead_s"] = setup_s + (time.perf_counter() - t_finish)
        metrics["overhead_share"] = metrics["overhead_s"] / max(metrics["wall_s"], 1e-9)
        metrics["objective"] = run.objective
        metrics["objective_value"] = _objective(run, metrics)
        metrics["wandb_run"] = tracker.run_path
        tracker.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        _atomic_json(out / "metrics.json", metrics)
        exit_code = 0
        return TrialResult(objective=metrics["objective_value"], metrics=metrics, out_dir=str(out))
    except TrialPruned:
        tracker.summary({"pruned": True})
        exit_code = 0  # a prune is a decision, not a crash
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise TrialFailed(f"CUDA out of memory: {str(exc).splitlines()[0]}", kind="oom") from exc
    finally:
        tracker.finish(exit_code)
        if compiled is not None:
            compiled._compiled_call_impl = None  # a reused base goes back uncompiled
        if base is not None and hasattr(model, "unload"):
            # Give the shared base back without the adapter (nothing was merged into it).
            model.unload()
            base[0].__dict__.pop("peft_config", None)

