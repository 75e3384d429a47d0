"""The Trainer a trial runs: transformers' Trainer with ranksweep's loss, callback and arguments.

Imported once a trial's data is known to be good (transformers' Trainer takes seconds to import).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ranksweep.config import OPTIMS, RunConfig
from ranksweep.errors import TrialFailed, TrialPruned
from ranksweep.models import torch_dtype
from ranksweep.speed import chunked_loss_forward, logits_eval_rows
from ranksweep.tracking import Tracker

__all__ = ["RanksweepTrainer", "Watch", "training_arguments"]

log = logging.getLogger("ranksweep")


class Watch(TrainerCallback):
    """Logs to W&B and the console, stops on NaN, and reports to the sweeper."""

    def __init__(self, tracker: Tracker, reporter: Optional[Any]) -> None:
        self.tracker = tracker
        self.reporter = reporter
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
            self.tracker.log(row, step=state.global_step)
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
        self.tracker.log(row, step=state.global_step)
        log.info("step %d/%d  eval loss %.4f", state.global_step, state.max_steps, loss)
        if self.reporter is not None and state.global_step > 0:
            # Intermediate values are eval losses (lower is better), whatever the objective.
            self.reporter.report(state.global_step, loss)
            if self.reporter.should_prune():
                raise TrialPruned(state.global_step, loss)


class RanksweepTrainer(Trainer):
    """transformers' Trainer with ranksweep's loss and a separate (padded) evaluation collator."""

    def __init__(self, *args, eval_collator=None, chunked: bool = False, ce_chunk: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.chunked = chunked
        self.ce_chunk = ce_chunk
        self.eval_rows: list[tuple[float, int]] = []  # the last evaluation's (summed loss, tokens) per example
        self.supervised_tokens = 0  # labelled tokens trained on (what capacity is measured against)

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's loop, with ``eval_loss`` the token-weighted mean over every scored token of the
        eval set (the objective the per-example results add up to, whatever the batching)."""
        self.eval_rows = []
        out = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        tokens = sum(n for _, n in self.eval_rows)
        if tokens and f"{prefix}_loss" in out.metrics:
            out.metrics[f"{prefix}_loss"] = sum(x for x, _ in self.eval_rows) / tokens
        return out

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
        if model.training and "labels" in inputs:
            self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        if self.chunked and self.label_smoother is None and self.compute_loss_func is None:
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            got = chunked_loss_forward(model, inputs, items, self.ce_chunk, training=model.training,
                                       rows=None if model.training else self.eval_rows)
            if got is not None:
                loss, preds = got
                if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                        and num_items_in_batch is not None):
                    loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does
                if return_outputs:
                    return loss, {"loss": loss, "logits": preds}
                return loss
        got = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not model.training and "labels" in inputs:
            sums, counts = logits_eval_rows(got[1]["logits"], inputs["labels"])
            self.eval_rows.extend(zip(sums.tolist(), counts.tolist()))
        return got if return_outputs else got[0]


def training_arguments(run: RunConfig, device: str, out: Path) -> TrainingArguments:
    """The Trainer's arguments for ``run``: no checkpoints, no reporting of its own, seeded."""
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
        gradient_checkpointing=False,  # enabled before peft wraps the model (see adapter.py)
    )
    if run.trainer.packing:
        args.include_num_input_tokens_seen = "all"  # packed rows have no padding to leave out
    return args
