"""The Trainer a trial runs: transformers' Trainer with ranksweep's loss, callback and arguments.

Imported once a trial's data is known to be good (transformers' Trainer takes seconds to import).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ranksweep.config import OPTIMS, RunConfig
from ranksweep.errors import TrialFailed, TrialPruned
from ranksweep.models import torch_dtype
from ranksweep.speed import chunked_loss_forward, liger_kernel_config, logits_eval_rows
from ranksweep.tracking import Tracker
from ranksweep.trial.checkpoints import save_state

__all__ = ["RanksweepTrainer", "Watch", "training_arguments"]

log = logging.getLogger("ranksweep")
TAKEN_OVER_CHECK_S = 15.0  # one read of the trial's state: negligible next to a training step


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
        self.start_step = 0  # > 0 when the run resumed from a checkpoint
        self.start_tokens = 0
        self.first_logged_step: Optional[int] = None
        self.last_check = -math.inf  # the last look at whether the trial is still this job's

    def on_train_begin(self, args, state, control, **kw):
        # Called once the Trainer has loaded a checkpoint's state: where this run starts.
        self.start_step = int(state.global_step)
        self.start_tokens = self.last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if self.start_step:
            log.info("resumed from the checkpoint at step %d/%d", self.start_step, state.max_steps)

    def on_save(self, args, state, control, model=None, **kw):
        """Beside the Trainer's files: the supervised-token count (the Trainer keeps no such counter)."""
        trainer = getattr(self, "trainer", None)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if trainer is not None and folder.is_dir():
            save_state(folder, trainer.supervised_tokens)

    def on_step_end(self, args, state, control, **kw):
        """Stop soon after another worker took this job's trial over (its sweeper was killed or cut off
        and the trial was marked failed): the job runs there again, this copy would only compete with it
        for the device and the checkpoint folder. Checked on the first step, then every TAKEN_OVER_CHECK_S."""
        check = getattr(self.reporter, "taken_over", None)
        now = time.monotonic()
        if check is None or now - self.last_check < TAKEN_OVER_CHECK_S:
            return
        self.last_check = now
        why = check()
        if why:
            raise TrialFailed(why, kind="taken_over")

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
            if self.first_logged_step is None:
                self.first_logged_step = int(state.global_step)
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
            # At the last step the work is done: a finished trial is a result, never pruned.
            if state.global_step < state.max_steps and self.reporter.should_prune():
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

    def evaluate_quietly(self) -> dict[str, float]:
        """The eval set's metrics as :meth:`evaluate` computes them (``eval_loss``, ``eval_token_accuracy``;
        :attr:`eval_rows` per example), seen by no callback: no W&B row, no intermediate value for the sweeper,
        no prune, not in the state's log history nor in the Watch's eval time. For a second look at the model
        (a nested adapter's prefixes), never the trial's own evaluation."""
        handler = self.callback_handler
        callbacks, handler.callbacks = handler.callbacks, []
        try:
            out = self.evaluation_loop(self.get_eval_dataloader(), description="Evaluation",
                                       prediction_loss_only=True if self.compute_metrics is None else None,
                                       metric_key_prefix="eval")
        finally:
            handler.callbacks = callbacks
        return out.metrics

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
        inputs.pop("skip_logits", None)  # the Trainer's hint to Liger's loss; the chunked loss has no logits
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


def training_arguments(run: RunConfig, device: str, out: Path, kernels: str = "none",
                       checkpoint_dir: Optional[os.PathLike | str] = None) -> TrainingArguments:
    """The Trainer's arguments for ``run`` (its ``max_steps`` already computed), seeded, no reporting of
    its own. ``kernels="liger"``: transformers patches Liger's kernels in (see ``speed.liger_kernel_config``).
    With ``trainer.save_every``: a checkpoint every that many steps into ``checkpoint_dir`` (the last one
    kept: adapter, optimizer, scheduler, RNG states and the Trainer's state, which holds the data position)."""
    t = run.trainer
    steps = int(t.max_steps or 0)
    saving = bool(t.save_every) and steps > 0
    if saving and checkpoint_dir is None:
        raise ValueError("trainer.save_every needs a checkpoint_dir")
    args = TrainingArguments(
        output_dir=str(checkpoint_dir if saving else out / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=t.micro_batch,
        per_device_eval_batch_size=t.eval_batch,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.schedule,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        eval_strategy="steps" if steps > 0 else "no",
        eval_steps=t.eval_every,
        logging_steps=t.log_every,
        save_strategy="steps" if saving else "no",
        save_steps=t.save_every if saving else 500,
        # Two: the Trainer deletes the older one before ranksweep's state lands in the new one (on_save).
        save_total_limit=2 if saving else None,
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=device == "cpu",
        bf16=torch_dtype(run.quant.compute_dtype, device) == torch.bfloat16 and device == "cuda",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_pin_memory=device == "cuda",
        optim=OPTIMS[t.optim][0],
        gradient_checkpointing=False,  # enabled before peft wraps the model (see adapter.py)
        use_liger_kernel=kernels == "liger",
        liger_kernel_config=liger_kernel_config() if kernels == "liger" else None,
    )
    if t.packing:
        args.include_num_input_tokens_seen = "all"  # packed rows have no padding to leave out
    return args
