"""One QLoRA trial as a recipe: named steps, run in order, sharing their state on a :class:`TrialRecipe`.

:func:`run_trial` calls the steps::

    load_data -> load_model -> tokenize_data -> prepare_adapter -> build_trainer
              -> train_and_evaluate -> save, and cleanup whatever happened in the last two.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ranksweep import data as data_mod
from ranksweep.config import RunConfig, to_run_config
from ranksweep.errors import TrialFailed, TrialPruned
from ranksweep.files import atomic_write_json
from ranksweep.models import load_base, pick_device, torch_dtype
from ranksweep.targets import resolve_targets
from ranksweep.tracking import Tracker, run_label
from ranksweep.trial.evaluate import generate_exact_match, objective_value

__all__ = ["Reporter", "TrialRecipe", "TrialResult", "run_trial"]

log = logging.getLogger("ranksweep")
# transformers 5 renames gradient_checkpointing; peft still calls the old names on every trial.
warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)


class Reporter(Protocol):
    """What a sweeper hands a trial: intermediate values in, a prune decision out."""

    def report(self, step: int, value: float) -> None: ...

    def should_prune(self) -> bool: ...


@dataclass
class TrialResult:
    objective: float
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""


def peak_memory_gb(device: str) -> tuple[float, str]:
    """The trial process's peak memory (GB) and what was measured."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9, "cuda_max_allocated"
    # ru_maxrss is KiB on Linux: the process's peak resident set, the CPU analogue.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "cpu_max_rss"


def resolved_config(cfg: RunConfig | DictConfig | dict) -> dict:
    """The resolved config as plain containers: what ``config.yaml`` and the W&B run record."""
    if isinstance(cfg, RunConfig):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[return-value]


class TrialRecipe:
    """The state of one trial, carried from step to step. Each step reads what the earlier ones set."""

    def __init__(self, run: RunConfig, out_dir: str | os.PathLike, resolved: dict,
                 reporter: Optional[Reporter] = None, base_loader: Optional[Callable[[], Optional[tuple]]] = None,
                 callbacks: Sequence[Any] = (), t_start: Optional[float] = None) -> None:
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.run = run
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.resolved = resolved
        self.reporter = reporter
        self.base_loader = base_loader
        self.callbacks = list(callbacks)
        self.device = pick_device(run.trainer.device)
        self.cache_dir = os.path.expanduser(run.cache_dir)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.base: Optional[tuple] = None  # a reused (model, tokenizer), given back in cleanup
        self.compiled: Any = None
        self.tracker: Optional[Tracker] = None
        self.metrics: dict[str, Any] = {}

    def load_data(self) -> None:
        """Examples, split into train and eval. Data first: a bad dataset fails in a second, before any model load."""
        run = self.run
        examples = data_mod.load_examples(run.data)
        self.train_ex, self.eval_ex = data_mod.split_examples(examples, run.data.eval_size, run.data.seed)
        # peft and the Trainer take seconds to import: only after the data is known to be good
        # (and before the model-load timing starts).
        from ranksweep.trial import adapter, trainer  # noqa: F401

    def load_model(self) -> None:
        """The quantized base and tokenizer (a reused base when ``base_loader`` has one); the LoRA targets."""
        run = self.run
        t_load = time.perf_counter()
        self.base = self.base_loader() if self.base_loader is not None else None
        if self.base is None:
            self.model, self.tok, _ = load_base(run.model, run.quant, self.device, self.cache_dir)
        else:
            self.model, self.tok = self.base
        self.load_s = time.perf_counter() - t_load
        # Checked against the loaded model before tokenising: a bad lora.targets fails first.
        self.modules = resolve_targets(self.model, run.model.family, run.lora.targets)

    def tokenize_data(self) -> None:
        """Token ids and labels of both splits (cached on disk under ``cache_dir/data``)."""
        run, cache = self.run, os.path.join(self.cache_dir, "data")
        self.train_ds = data_mod.tokenize_examples(self.train_ex, self.tok, run.model.variant, run.data,
                                                   run.trainer.max_seq_len, cache_dir=cache)
        self.eval_ds = data_mod.tokenize_examples(self.eval_ex, self.tok, run.model.variant, run.data,
                                                  run.trainer.max_seq_len, cache_dir=cache)

    def prepare_adapter(self) -> None:
        """Memory plan, kernels, dequantized weights, k-bit preparation, checkpointing, LoRA, compile."""
        from transformers import set_seed

        from ranksweep.memory import plan_memory
        from ranksweep.speed import apply_kernels, cache_dequantized, resolve_kernels
        from ranksweep.trial.adapter import add_lora, compile_decoder, prepare_for_training

        run = self.run
        self.mem = plan_memory(run, self.device, config=self.model.config)
        log.info("memory: %s", self.mem.describe())
        patched = apply_kernels(self.model, run.model.family, resolve_kernels(run.trainer.kernels, self.device))
        self.kernels = "liger" if patched else "none"
        if run.quant.bits == 4:  # also drops copies a previous trial on this base kept
            cache_dequantized(self.model, self.mem.dequant_layers, torch_dtype(run.quant.compute_dtype, self.device))
        set_seed(run.trainer.seed)
        self.model = prepare_for_training(self.model, run, self.mem)
        self.model = add_lora(self.model, run, self.modules)
        if run.trainer.compile:
            self.compiled = compile_decoder(self.model)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in self.model.parameters())

    def build_trainer(self) -> None:
        """The tracker (W&B), the Trainer's arguments and the Trainer, with ranksweep's loss and callback."""
        from transformers.trainer_callback import PrinterCallback

        from ranksweep.speed import packing_collator
        from ranksweep.trial.evaluate import argmax_logits, token_accuracy
        from ranksweep.trial.trainer import RanksweepTrainer, Watch, training_arguments

        run, reporter = self.run, self.reporter
        attrs = reporter is not None and hasattr(reporter, "set_attrs")
        if attrs:
            reporter.set_attrs({"alpha": run.lora.lora_alpha, "trainable_params": self.trainable,
                                "target_modules": self.modules})
        self.tracker = Tracker(run.logger, run, self.resolved, str(self.out))
        if attrs and self.tracker.run_path:
            reporter.set_attrs({"wandb_run": self.tracker.run_path})  # known now: pruned and failed runs have one too
        self.name = run_label(run)
        log.info("trial %s: %s on %s, %d-bit, %d trainable params (%.3f%%), %d train / %d eval examples",
                 self.name, run.model.name, self.device, run.quant.bits, self.trainable,
                 100 * self.trainable / max(self.total, 1), len(self.train_ds), len(self.eval_ds))
        args = training_arguments(run, self.device, self.out)
        self.watch = Watch(self.tracker, reporter)
        padded = data_mod.CausalCollator(self.tok)
        self.trainer = RanksweepTrainer(
            model=self.model, args=args, train_dataset=self.train_ds, eval_dataset=self.eval_ds,
            data_collator=packing_collator(self.tok, self.model) if run.trainer.packing else padded,
            eval_collator=padded, chunked=run.trainer.loss_impl == "chunked", ce_chunk=run.trainer.ce_chunk,
            callbacks=[self.watch, *self.callbacks], compute_metrics=token_accuracy,
            preprocess_logits_for_metrics=argmax_logits,
        )
        self.trainer.remove_callback(PrinterCallback)  # our callback logs one line per interval instead

    def train_and_evaluate(self) -> None:
        """Train (unless ``max_steps=0``), evaluate at the last step, then exact match on generations."""
        run, trainer, watch = self.run, self.trainer, self.watch
        self.train_s, self.tokens = 0.0, 0
        self.setup_s = time.perf_counter() - self.t_start  # start, data, load (or reuse), tokenise, adapter, Trainer
        if run.trainer.max_steps > 0:
            t_train = time.perf_counter()
            trainer.train()
            self.train_s = time.perf_counter() - t_train
            self.tokens = int(trainer.state.num_input_tokens_seen or 0)
        self.train_s -= watch.eval_s  # tokens/s counts training time only
        if watch.last_eval is not None and watch.last_eval[0] == trainer.state.global_step:
            eval_metrics = watch.last_eval[1]  # the last periodic eval was at the final step
        else:
            eval_metrics = trainer.evaluate()
        eval_loss = float(eval_metrics["eval_loss"])
        if not math.isfinite(eval_loss):
            raise TrialFailed(f"non-finite eval loss {eval_loss}", kind="nan")
        self.metrics = self._eval_metrics(eval_loss, eval_metrics)
        examples = self._examples()
        if run.data.metric == "exact_match" and run.data.metric_examples > 0:
            em, samples = generate_exact_match(self.model, self.tok, self.eval_ds, run.data.metric_examples,
                                               run.data.max_new_tokens, run.trainer.eval_batch, self.device)
            self.metrics["exact_match"] = em
            self.metrics["exact_match_n"] = min(run.data.metric_examples, len(self.eval_ds))
            self.metrics["samples"] = [{"reference": r, "prediction": p} for r, p in samples[:5]]
            examples["correct"] = [float(data_mod.exact_match([p], [r])) for r, p in samples]
        self.metrics["eval_examples"] = examples
        if run.trainer.max_steps > 0:
            from ranksweep.trial.adapter import adapter_summary

            self.metrics["adapter"] = adapter_summary(self.model)

    def _examples(self) -> dict[str, Any]:
        """The last evaluation per example (what the sweeper's paired bootstrap resamples), and a
        fingerprint of the eval examples: rungs are compared in pairs only on the same examples."""
        import hashlib
        import json

        rows = self.trainer.eval_rows
        digest = hashlib.sha256()
        for ids, labels in zip(self.eval_ds["input_ids"], self.eval_ds["labels"]):
            digest.update(json.dumps([list(ids), list(labels)]).encode())
        return {"loss": [round(x, 7) for x, _ in rows], "tokens": [int(n) for _, n in rows],
                "fingerprint": digest.hexdigest()[:16], "n": len(self.eval_ds)}

    def _eval_metrics(self, eval_loss: float, eval_metrics: dict[str, Any]) -> dict[str, Any]:
        run, mem = self.run, self.mem
        ckpt = mem.grad_ckpt
        return {
            "eval_loss": eval_loss,
            "perplexity": math.exp(min(eval_loss, 50)),
            "token_accuracy": float(eval_metrics.get("eval_token_accuracy", float("nan"))),
            "trainable_params": self.trainable,
            "total_params": self.total,
            "target_modules": self.modules,
            "r": run.lora.r,
            "alpha": run.lora.lora_alpha,
            "steps": int(self.trainer.state.global_step),
            "train_tokens": self.tokens,
            "supervised_tokens": int(self.trainer.supervised_tokens),
            "lr": run.trainer.lr,
            "tokens_per_s": self.tokens / self.train_s if self.train_s > 0 else 0.0,
            "train_s": self.train_s,
            "load_s": self.load_s,
            "device": self.device,
            "gradient_checkpointing": ckpt,
            "checkpointed_layers": mem.ckpt_layers if ckpt else 0,
            "dequant_cached_layers": mem.dequant_layers,
            "packing": run.trainer.packing,
            "loss_impl": run.trainer.loss_impl,
            "kernels": self.kernels,
            "optim": run.trainer.optim,
            "estimated_peak_gb": mem.estimate.total / 1e9 if mem.estimate is not None else None,
            "name": self.name,
        }

    def save(self) -> TrialResult:
        """The adapter, ``config.yaml`` and ``metrics.json`` (written last, atomically); the tracker's summary."""
        t_finish = time.perf_counter()
        self.model.save_pretrained(self.out / "adapter", safe_serialization=True)
        OmegaConf.save(OmegaConf.create(self.resolved), self.out / "config.yaml")
        metrics = self.metrics
        metrics["peak_mem_gb"], metrics["peak_mem_kind"] = peak_memory_gb(self.device)
        metrics["wall_s"] = time.perf_counter() - self.t_start
        # What a trial spends outside training and evaluation: its overhead.
        metrics["overhead_s"] = self.setup_s + (time.perf_counter() - t_finish)
        metrics["overhead_share"] = metrics["overhead_s"] / max(metrics["wall_s"], 1e-9)
        metrics["objective"] = self.run.objective
        metrics["objective_value"] = objective_value(self.run, metrics)
        metrics["wandb_run"] = self.tracker.run_path
        self.tracker.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        atomic_write_json(self.out / "metrics.json", metrics)
        return TrialResult(objective=metrics["objective_value"], metrics=metrics, out_dir=str(self.out))

    def cleanup(self, exit_code: int) -> None:
        """Finish the tracker; give a reused base back uncompiled and without the adapter."""
        from ranksweep.trial.adapter import uncompile

        if self.tracker is not None:
            self.tracker.finish(exit_code)
        if self.compiled is not None:
            uncompile(self.compiled)
        if self.base is not None and hasattr(self.model, "unload"):
            # Nothing was merged into the shared base: unloading leaves it as it was loaded.
            self.model.unload()
            self.base[0].__dict__.pop("peft_config", None)


def run_trial(cfg: RunConfig | DictConfig | dict, out_dir: str | os.PathLike, reporter: Optional[Reporter] = None,
              base_loader: Optional[Callable[[], Optional[tuple]]] = None, callbacks: Sequence[Any] = (),
              resolved: Optional[dict] = None) -> TrialResult:
    """Train and evaluate one adapter; return the objective and metrics.

    ``cfg`` is a validated :class:`RunConfig` (what a job passes), or a composed config that is
    validated here, once. ``resolved`` is the resolved config written to ``config.yaml`` and W&B
    (computed from ``cfg`` when not given). ``base_loader`` optionally returns ``(model, tokenizer)``
    already loaded (a worker reuses one quantized base across its trials); it is called after
    the data loaded, so a bad dataset fails before any model load. ``callbacks`` are extra
    transformers ``TrainerCallback`` objects (the benchmark times steps with one).
    """
    t_start = time.perf_counter()
    run = cfg if isinstance(cfg, RunConfig) else to_run_config(cfg)
    recipe = TrialRecipe(run, out_dir, resolved_config(cfg) if resolved is None else resolved,
                         reporter=reporter, base_loader=base_loader, callbacks=callbacks, t_start=t_start)
    recipe.load_data()
    recipe.load_model()
    recipe.tokenize_data()
    recipe.prepare_adapter()
    recipe.build_trainer()
    exit_code = 1
    try:
        recipe.train_and_evaluate()
        result = recipe.save()
        exit_code = 0
        return result
    except TrialPruned:
        recipe.tracker.summary({"pruned": True})
        exit_code = 0  # a prune is a decision, not a crash
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise TrialFailed(f"CUDA out of memory: {str(exc).splitlines()[0]}", kind="oom") from exc
    finally:
        recipe.cleanup(exit_code)
