"""What one Hydra job does: run a trial and, when a sweeper launched it, report to its Optuna trial.

The job's config arrives validated (a :class:`~ranksweep.config.RunConfig`, built once by the
command) together with the resolved config that ``config.yaml`` and W&B record.

A CUDA out-of-memory error is retried once with half the micro-batch and twice
the gradient accumulation (the same effective batch), from step 0 (checkpoints of the first
attempt are of another batch shape).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

from ranksweep.config import RunConfig
from ranksweep.errors import TrialFailed, TrialPruned
from ranksweep.sweep import keys
from ranksweep.trial import TrialResult, run_trial

log = logging.getLogger("ranksweep")

_Cfg = TypeVar("_Cfg", RunConfig, DictConfig)


class _LazyReporter:
    """The job's OptunaReporter, opened on first use: with ``trainer.epochs`` the pruning schedule
    (``prune_after`` x max_steps) is known only once the trial has tokenised its data."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.max_steps = int(run.trainer.max_steps or 0)
        self._inner: Optional[Any] = None

    def set_max_steps(self, steps: int) -> None:
        if self._inner is None:
            self.max_steps = int(steps)

    @property
    def inner(self) -> Any:
        if self._inner is None:
            from ranksweep.pruning import OptunaReporter

            self._inner = OptunaReporter.from_handle(self.run.trial, max_steps=self.max_steps,
                                                     eval_every=int(self.run.trainer.eval_every))
        return self._inner

    def report(self, step: int, value: float) -> None:
        self.inner.report(step, value)

    def should_prune(self) -> bool:
        return self.inner.should_prune()

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self.inner.set_attrs(attrs)

    def taken_over(self) -> Optional[str]:
        return self.inner.taken_over()


def _reporter(run: RunConfig) -> Optional[Any]:
    handle = run.trial
    if handle.storage and handle.study_name and handle.trial_number is not None:
        return _LazyReporter(run)
    return None


def halve_batch(cfg: _Cfg) -> Optional[_Cfg]:
    """The OOM retry config: micro_batch / 2, grad_accum * 2; None when micro_batch is 1.

    A :class:`RunConfig` gives a RunConfig, a DictConfig a DictConfig; the original is left as it is.
    """
    mb = int(cfg.trainer.micro_batch)
    if mb <= 1:
        return None
    if isinstance(cfg, RunConfig):
        trainer = dataclasses.replace(cfg.trainer, micro_batch=mb // 2, grad_accum=int(cfg.trainer.grad_accum) * 2)
        return dataclasses.replace(cfg, trainer=trainer)
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    new.trainer.micro_batch = mb // 2
    new.trainer.grad_accum = int(cfg.trainer.grad_accum) * 2
    return new


def _with_batch(resolved: Optional[dict], run: RunConfig) -> Optional[dict]:
    """``resolved`` with the micro-batch and gradient accumulation of ``run`` (the OOM retry's)."""
    if resolved is None:
        return None
    new = copy.deepcopy(resolved)
    new.setdefault("trainer", {}).update(micro_batch=run.trainer.micro_batch, grad_accum=run.trainer.grad_accum)
    return new


# One quantized base per worker process, reused by its trials (each gets a fresh adapter).
_BASE: dict[tuple, tuple] = {}


def cached_base(run: RunConfig) -> Optional[tuple]:
    """The worker's loaded base for this config, loading it (and dropping another) when needed."""
    from ranksweep.models import load_base, pick_device

    if not run.trainer.reuse_base:
        return None
    device = pick_device(run.trainer.device)
    key = (run.model.id, run.model.revision, run.model.dtype, run.model.attn_implementation, run.quant.bits,
           run.quant.quant_type, run.quant.double_quant, run.quant.compute_dtype, device,
           os.path.expanduser(run.cache_dir))
    if key not in _BASE:
        _BASE.clear()
        gc.collect()
        model, tok, _ = load_base(run.model, run.quant, device, os.path.expanduser(run.cache_dir))
        _BASE[key] = (model, tok)
    return _BASE[key]


def _injected_fault(run: RunConfig) -> None:
    """Fault injection for failure tests: RANKSWEEP_FAULT=<rank>[,<rank>...] makes those ranks raise."""
    ranks = os.environ.get("RANKSWEEP_FAULT", "")
    if ranks and str(run.lora.r) in ranks.split(",") and run.trainer.max_steps != 0:
        raise RuntimeError(f"injected fault for lora.r={run.lora.r} (RANKSWEEP_FAULT)")


def _run_with_oom_retry(run: RunConfig, out_dir: str, reporter: Optional[Any], resolved: Optional[dict]) -> TrialResult:
    try:
        return run_trial(run, out_dir, reporter=reporter, base_loader=lambda: cached_base(run), resolved=resolved)
    except TrialFailed as exc:
        retry = halve_batch(run) if exc.kind == "oom" else None
        if retry is None:
            raise
        log.warning("out of memory; retrying once with trainer.micro_batch=%d trainer.grad_accum=%d",
                    retry.trainer.micro_batch, retry.trainer.grad_accum)
        import torch

        from ranksweep.trial.checkpoints import checkpoint_dir, clear

        _BASE.clear()
        torch.cuda.empty_cache()
        clear(checkpoint_dir(retry, Path(out_dir)))
        result = run_trial(retry, out_dir, reporter=reporter, base_loader=lambda: cached_base(retry),
                           resolved=_with_batch(resolved, retry))
        result.metrics["oom_retry"] = True
        return result


def _summary(m: dict[str, Any], out_dir: str) -> str:
    """What a finished job prints: its metrics and where its artefacts are."""
    lines = [f"{m['name']}: eval_loss {m['eval_loss']:.4f}  perplexity {m['perplexity']:.3f}  "
             f"token_accuracy {m.get('token_accuracy', float('nan')):.3f}"]
    if "exact_match" in m:
        lines[0] += f"  exact_match {m['exact_match']:.3f} (n={m['exact_match_n']})"
    lines.append(f"  trainable params {m['trainable_params']:,}  {m['tokens_per_s']:.0f} tok/s  "
                 f"peak mem {m['peak_mem_gb']:.2f} GB ({m['peak_mem_kind']})  wall {m['wall_s']:.0f} s")
    lines.append(f"  adapter:  {out_dir}/adapter")
    lines.append(f"  metrics:  {out_dir}/metrics.json")
    lines.append(f"  config:   {out_dir}/config.yaml")
    if m.get("wandb_run"):
        lines.append(f"  W&B run:  {m['wandb_run']}")
    return "\n".join(lines)


def check_paths(run: RunConfig) -> None:
    """The folders a job writes besides its own, checked before any work (a bad one is one line, exit 2):
    the cache and W&B's dir must be folders or creatable, a checkpoint folder new, empty or ranksweep's."""
    from ranksweep.ownership import check_output_dir, creatable_dir
    from ranksweep.trial.checkpoints import RUN_FILE

    creatable_dir(run.cache_dir, "cache_dir (RANKSWEEP_CACHE)")
    if run.logger.dir:
        creatable_dir(run.logger.dir, "logger.dir")
    if run.trial.checkpoint_dir:
        check_output_dir(run.trial.checkpoint_dir, "trial.checkpoint_dir", RUN_FILE)


def run_job(run: RunConfig, out_dir: str, resolved: Optional[dict] = None, claim: Optional[str] = None) -> float:
    """Run one trial in ``out_dir`` and return its objective (what Hydra's sweeper receives).

    ``run`` is the job's validated config; ``resolved`` the resolved config that ``config.yaml``
    and W&B record (derived from ``run`` when not given). ``claim``: the key that named ``out_dir`` (a single
    run's), which must then be new, empty or ranksweep's (:func:`ranksweep.ownership.claim_run_dir`).
    """
    check_paths(run)
    if claim is not None:
        from ranksweep.ownership import claim_run_dir

        out_dir = str(claim_run_dir(out_dir, claim))
    reporter = _reporter(run)
    t0 = time.perf_counter()
    try:
        _injected_fault(run)
        result = _run_with_oom_retry(run, out_dir, reporter, resolved)
    except BaseException as exc:
        if not isinstance(exc, TrialPruned):
            _BASE.clear()  # a failed trial may leave the base in any state: load a fresh one next time
        if reporter is not None and getattr(exc, "kind", None) != "taken_over":  # a finished trial is not ours
            reporter.set_attrs({keys.DURATION_S: time.perf_counter() - t0, keys.OUTPUT_DIR: out_dir,
                                keys.FAIL_REASON: f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
        raise
    m = result.metrics
    if reporter is not None:
        reporter.set_attrs({  # the trial's metrics (metrics.json) of the same names, and where it ran
            keys.OUTPUT_DIR: out_dir, keys.WANDB_RUN: m.get("wandb_run"), keys.TRAINABLE_PARAMS: m["trainable_params"],
            keys.PEAK_MEM_GB: m["peak_mem_gb"], keys.DURATION_S: time.perf_counter() - t0, keys.ALPHA: m["alpha"],
            keys.TOKENS_PER_S: m["tokens_per_s"], keys.EVAL_LOSS: m["eval_loss"],
            keys.EXACT_MATCH: m.get("exact_match"), keys.LR: m.get("lr"),
            keys.SUPERVISED_TOKENS: m.get("supervised_tokens"), keys.STEPS: m.get("steps"),
            keys.EVAL_EXAMPLES: m.get("eval_examples"), keys.ADAPTER: m.get("adapter"),
            keys.PRESCREEN: m.get("prescreen"),  # a nested-rank prescreen's prefixes (trial.nested_ranks)
        })
    print(_summary(m, out_dir), flush=True)
    return result.objective
