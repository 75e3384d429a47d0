"""One QLoRA trial as a recipe: named steps, run in order, sharing their state on a :class:`TrialRecipe`.

:func:`run_trial` calls the steps::

    load_data -> load_model -> tokenize_data -> prepare_adapter -> build_trainer
              -> train_and_evaluate -> save, and cleanup whatever happened in the last two.

With ``trial.nested_ranks`` (``hydra.sweeper.prescreen=nested``) the adapter trains with nested ranks
(:mod:`ranksweep.trial.nested`); after the trial's own evaluation at the full rank, every prefix is evaluated
on the same examples (``metrics["prescreen"]``), out of the Trainer's callbacks.

``trainer.epochs`` becomes ``max_steps`` once the training set is tokenised (before the memory plan,
the Trainer and the pruner's schedule read it). With ``trainer.save_every`` the Trainer checkpoints
into ``trial.checkpoint_dir``; a trial started there resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ranksweep import data as data_mod
from ranksweep.config import RunConfig, to_run_config
from ranksweep.errors import DataError, TrialFailed, TrialPruned
from ranksweep.files import atomic_write_json
from ranksweep.models import load_base, pick_device, torch_dtype
from ranksweep.sweep import keys
from ranksweep.targets import resolve_targets
from ranksweep.tracking import Tracker, run_label
from ranksweep.trial.evaluate import generate_exact_match, objective_value

__all__ = ["Reporter", "TrialRecipe", "TrialResult", "run_trial"]

log = logging.getLogger("ranksweep")
# transformers 5 renames gradient_checkpointing; peft still calls the old names on every trial.
warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)


class Reporter(Protocol):
    """What a sweeper hands a trial: intermediate values in, a prune decision out. A reporter may also
    have ``taken_over() -> Optional[str]``: why its trial is no longer this job's (the trainer stops)."""

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


def _settle_raw_text(run: RunConfig, examples: Sequence[dict], resolved: dict) -> RunConfig:
    """Raw text (``{"text"}`` rows, ``data.format=auto`` included) has no prompt to generate from: the
    generation metric is off (recorded in ``resolved`` too), and ``objective=exact_match`` is a data error."""
    if not examples or "text" not in examples[0] or run.data.metric != "exact_match":
        return run
    if run.objective == "exact_match":
        raise DataError("objective=exact_match needs prompt/response data, but data.path holds raw text "
                        "(no response to match); use objective=eval_loss")
    log.info("raw text: no prompt to generate from, data.metric=none")
    if isinstance(resolved.get("data"), dict):
        resolved["data"]["metric"] = "none"
    return replace(run, data=replace(run.data, metric="none"))


def _require_trainable_tokens(ds: Any, split: str, run: RunConfig) -> None:
    """A :class:`DataError` when no row of ``ds`` has a labelled token after the causal shift (the loss of
    a token is predicted from the tokens before it: a label at position 0 trains nothing)."""
    for row in ds.select_columns(["labels"]):
        if any(x != data_mod.IGNORE_INDEX for x in row["labels"][1:]):
            return
    what = "text" if run.data.text_column else "response (or assistant turn)"
    key = "data.eval_path" if split == "eval" and run.data.eval_path else "data.path"
    raise DataError(f"{key}: no trainable tokens in the {split} set after formatting: every example's {what} "
                    f"is empty (or cut off by trainer.max_seq_len={run.trainer.max_seq_len})")


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
        self.nested: Any = None  # the NestedRankCallback of a nested-rank (prescreen) trial
        self.fingerprint: Optional[str] = None

    def load_data(self) -> None:
        """Train and eval examples (a held-out eval set, or a seeded split). Data first: a bad dataset
        fails in a second, before any model load."""
        from ranksweep.data.identity import check_expected, data_identity

        self.train_ex, self.eval_ex = data_mod.load_splits(self.run.data)
        # What the files hold (cached per process): a sweep's job refuses data other than the study's, and a
        # checkpoint resumes only on the data it was made on.
        self.data_identity = data_identity(self.run.data)
        check_expected(self.data_identity, self.run.trial.data_digest)
        self.run = _settle_raw_text(self.run, self.eval_ex, self.resolved)
        # peft and the Trainer take seconds to import: only after the data is known to be good
        # (and before the model-load timing starts).
        from ranksweep.trial import adapter, trainer  # noqa: F401

    def load_model(self) -> None:
        """The quantized base and tokenizer (a reused base when ``base_loader`` has one); the LoRA targets."""
        from ranksweep.models import attention_kwargs
        from ranksweep.speed import resolve_kernels

        run = self.run
        # Refused before any load: liger or FlashAttention without CUDA, liger-kernel not installed.
        self.kernels = resolve_kernels(run.trainer.kernels, self.device)
        attention_kwargs(run.model, self.device)
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
        _require_trainable_tokens(self.train_ds, "training", run)  # else the loss is 0/0 = NaN after training
        _require_trainable_tokens(self.eval_ds, "eval", run)
        if run.trainer.max_steps is None:  # trainer.epochs: the steps of that many passes
            steps = run.trainer.steps_for(len(self.train_ds))
            log.info("trainer.epochs=%g: %d steps (%d training rows, micro_batch %d x grad_accum %d)",
                     run.trainer.epochs, steps, len(self.train_ds), run.trainer.micro_batch, run.trainer.grad_accum)
            self.run = replace(run, trainer=replace(run.trainer, max_steps=steps))
        if self.reporter is not None and hasattr(self.reporter, "set_max_steps"):
            self.reporter.set_max_steps(int(self.run.trainer.max_steps))

    def prepare_adapter(self) -> None:
        """Memory plan, kernels, dequantized weights, k-bit preparation, checkpointing, LoRA, compile."""
        from transformers import set_seed

        from ranksweep.memory import plan_memory
        from ranksweep.speed import cache_dequantized
        from ranksweep.trial.adapter import add_lora, compile_decoder, prepare_for_training

        run = self.run
        self.mem = plan_memory(run, self.device, config=self.model.config)
        log.info("memory: %s", self.mem.describe())
        if run.quant.bits == 4:  # also drops copies a previous trial on this base kept
            cache_dequantized(self.model, self.mem.dequant_layers, torch_dtype(run.quant.compute_dtype, self.device))
        set_seed(run.trainer.seed)
        self.model = prepare_for_training(self.model, run, self.mem)
        self.model = add_lora(self.model, run, self.modules)
        if run.trial.nested_ranks and run.trainer.max_steps > 0:
            self._nest()
        if run.trainer.compile:
            self.compiled = compile_decoder(self.model)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in self.model.parameters())

    def build_trainer(self) -> None:
        """The tracker (W&B), the Trainer's arguments and the Trainer, with ranksweep's loss and callback."""
        from transformers.trainer_callback import PrinterCallback

        from ranksweep.speed import packing_collator
        from ranksweep.trial import checkpoints
        from ranksweep.trial.evaluate import argmax_logits, token_accuracy
        from ranksweep.trial.trainer import RanksweepTrainer, Watch, training_arguments

        run, reporter = self.run, self.reporter
        attrs = reporter is not None and hasattr(reporter, "set_attrs")
        if attrs:
            reporter.set_attrs({keys.ALPHA: run.lora.lora_alpha, keys.TRAINABLE_PARAMS: self.trainable,
                                keys.TARGET_MODULES: self.modules, keys.DATA_DIGEST: self.data_identity.digest})
        self.tracker = Tracker(run.logger, run, self.resolved, str(self.out))
        if attrs and self.tracker.run_path:
            # Known now: pruned and failed runs have one too.
            reporter.set_attrs({keys.WANDB_RUN: self.tracker.run_path})
        self.name = run_label(run)
        log.info("trial %s: %s on %s, %d-bit, %d trainable params (%.3f%%), %d train / %d eval examples",
                 self.name, run.model.name, self.device, run.quant.bits, self.trainable,
                 100 * self.trainable / max(self.total, 1), len(self.train_ds), len(self.eval_ds))
        self.checkpoint_dir = checkpoints.checkpoint_dir(run, self.out)
        self.resume_from = None
        if self.checkpoint_dir is not None and run.trainer.max_steps:
            self.resume_from = checkpoints.claim(self.checkpoint_dir, run, data=self.data_identity.digests)
        args = training_arguments(run, self.device, self.out, kernels=self.kernels,
                                  checkpoint_dir=self.checkpoint_dir)
        self.watch = Watch(self.tracker, reporter)
        padded = data_mod.CausalCollator(self.tok)
        self.trainer = RanksweepTrainer(
            model=self.model, args=args, train_dataset=self.train_ds, eval_dataset=self.eval_ds,
            data_collator=packing_collator(self.tok, self.model) if run.trainer.packing else padded,
            eval_collator=padded, chunked=run.trainer.loss_impl == "chunked", ce_chunk=run.trainer.ce_chunk,
            callbacks=[self.watch, *self.callbacks, *([self.nested] if self.nested is not None else [])],
            compute_metrics=token_accuracy,
            preprocess_logits_for_metrics=argmax_logits,
        )
        self.trainer.remove_callback(PrinterCallback)  # our callback logs one line per interval instead
        self.watch.trainer = self.trainer  # its on_save writes the trainer's counters into the checkpoint

    def train_and_evaluate(self) -> None:
        """Train (unless ``max_steps=0``), evaluate at the last step, then exact match on generations."""
        run, trainer, watch = self.run, self.trainer, self.watch
        self.train_s, self.tokens = 0.0, 0
        self.setup_s = time.perf_counter() - self.t_start  # start, data, load (or reuse), tokenise, adapter, Trainer
        if run.trainer.max_steps > 0:
            t_train = time.perf_counter()
            if self.resume_from is None:
                trainer.train()
            else:
                from ranksweep.trial.checkpoints import saved_state

                trainer.supervised_tokens = int(saved_state(self.resume_from)["supervised_tokens"])
                if not _restore_finished(trainer, self.resume_from, watch):
                    trainer.train(resume_from_checkpoint=str(self.resume_from))
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
        if self.nested is not None:
            from ranksweep.trial.nested import unnest

            self.metrics["prescreen"] = self._prescreen()
            unnest(self.model)  # the plain rank-r peft adapter from here on: saved, unloaded

    def _nest(self) -> None:
        """Nested ranks on the fresh adapter, each prefix b scaled as the alpha rule scales rank b, and the
        callback that draws b at every optimizer step. A model the mask cannot restrict fails the trial."""
        from ranksweep.trial.nested import NestedRankCallback, RankSampler, nest, rule_scale

        run = self.run
        config = getattr(self.model, "peft_config", {}).get("default")
        try:
            if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
                raise ValueError("its LoRA config has a rank_pattern (fused mixture-of-experts parameters)")
            nest(self.model, rule_scale(run.lora))
        except ValueError as exc:
            self.cleanup(1)  # a reused base goes back without the adapter
            raise TrialFailed(f"hydra.sweeper.prescreen=nested (trial.nested_ranks={run.trial.nested_ranks}) "
                              f"trains plain LoRA on linear layers only: {exc}; use hydra.sweeper.prescreen=none "
                              "for this model and lora.targets", kind="prescreen") from None
        self.nested = NestedRankCallback(RankSampler(run.trial.nested_ranks, seed=run.trainer.seed))

    def _prescreen(self) -> dict[str, Any]:
        """Every prefix b of ``trial.nested_ranks`` on the eval examples, as the trial evaluated its full rank:
        its objective value, eval loss and per-example results (:meth:`_examples`, ``correct`` where exact
        match is generated); ``drawn``: the optimizer steps each b trained. The evaluations are no callback's
        (no intermediate value, W&B row or prune): the trial's eval and objective stay the full rank's."""
        from ranksweep.trial.nested import prefix

        run, trainer, nested = self.run, self.trainer, self.nested
        nested.catch_up(int(trainer.state.global_step))  # a run restored at its last step trained no step here
        ranks = sorted(set(run.trial.nested_ranks))
        generate = run.data.metric == "exact_match" and run.data.metric_examples > 0
        rows, prefixes = trainer.eval_rows, {}
        for b in ranks:
            with prefix(self.model, b):
                eval_loss = float(trainer.evaluate_quietly()["eval_loss"])
                got: dict[str, Any] = {"eval_loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50))}
                examples = self._examples()
                if generate:
                    got["exact_match"], samples = generate_exact_match(
                        self.model, self.tok, self.eval_ds, run.data.metric_examples, run.data.max_new_tokens,
                        run.trainer.eval_batch, self.device)
                    examples["correct"] = [float(data_mod.exact_match([p], [r])) for r, p in samples]
            value = objective_value(run, got)
            prefixes[str(b)] = {"value": value if math.isfinite(value) else None,
                                "eval_loss": eval_loss if math.isfinite(eval_loss) else None, **examples}
            log.info("prefix r=%d: eval loss %.4f", b, eval_loss)
        trainer.eval_rows = rows  # the full rank's, as the trial's evaluation left them
        return {"ranks": ranks, "prefixes": prefixes, "drawn": {str(b): nested.drawn.count(b) for b in ranks}}

    def _examples(self) -> dict[str, Any]:
        """The last evaluation per example (what the sweeper's paired bootstrap resamples), and a
        fingerprint of the eval examples: rungs are compared in pairs only on the same examples."""
        import hashlib
        import json

        rows = self.trainer.eval_rows
        if self.fingerprint is None:
            digest = hashlib.sha256()
            for ids, labels in zip(self.eval_ds["input_ids"], self.eval_ds["labels"]):
                digest.update(json.dumps([list(ids), list(labels)]).encode())
            self.fingerprint = digest.hexdigest()[:16]
        return {"loss": [round(x, 7) for x, _ in rows], "tokens": [int(n) for _, n in rows],
                "fingerprint": self.fingerprint, "n": len(self.eval_ds)}

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
            "max_steps": int(run.trainer.max_steps),
            "epochs": run.trainer.epochs,
            "resumed_from_step": self.watch.start_step,
            "first_logged_step": self.watch.first_logged_step,
            # tokens of this run (a resumed one counts from its checkpoint) over its training time
            "tokens_per_s": (self.tokens - self.watch.start_tokens) / self.train_s if self.train_s > 0 else 0.0,
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
            "data_digest": self.data_identity.digest,
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
        if metrics.get("prescreen"):  # the prefix curve: prescreen/value_r2, prescreen/eval_loss_r2, ...
            pre = metrics["prescreen"]
            self.tracker.summary({f"prescreen/{k}_r{b}": v for b, p in pre["prefixes"].items()
                                  for k, v in p.items() if k in ("value", "eval_loss") and v is not None}
                                 | {f"prescreen/drawn_r{b}": n for b, n in pre["drawn"].items()})
        atomic_write_json(self.out / "metrics.json", metrics)
        return TrialResult(objective=metrics["objective_value"], metrics=metrics, out_dir=str(self.out))

    def cleanup(self, exit_code: int) -> None:
        """Finish the tracker; give a reused base back uncompiled and without the adapter."""
        from ranksweep.trial.adapter import uncompile

        if self.tracker is not None:
            self.tracker.finish(exit_code)
        if self.nested is not None:  # a trial that failed while nested: the full rank, no hooks, before unload
            from ranksweep.trial.nested import is_nested, unnest

            if is_nested(self.model):
                unnest(self.model)
        if self.compiled is not None:
            uncompile(self.compiled)
        if self.base is not None and hasattr(self.model, "unload"):
            # Nothing was merged into the shared base: unloading leaves it as it was loaded.
            self.model.unload()
            self.base[0].__dict__.pop("peft_config", None)


def _restore_finished(trainer: Any, checkpoint: Path, watch: Any) -> bool:
    """A checkpoint at max_steps (the run finished before its worker died): load its adapter and state
    instead of training (the Trainer would train one step past it). False when training remains."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if state.global_step < trainer.args.max_steps:
        return False
    set_peft_model_state_dict(trainer.model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))
    trainer.state = state
    watch.start_step = int(state.global_step)
    watch.start_tokens = int(state.num_input_tokens_seen or 0)
    log.info("the checkpoint at step %d is the last step: evaluating it", state.global_step)
    return True


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
