"""Subcommands that are not Hydra runs: ``ranksweep report | export | sync | dashboard | estimate``.

Each takes argv (without the subcommand) and returns an exit code. User mistakes
(a missing study, an empty one, a storage that is not a database, bad options) end
with one line ``ranksweep: error: ...`` on stderr and exit code 2, like the rest
of ranksweep; any other failure is one line too, exit code 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from ranksweep.errors import RanksweepError, describe_failure
from ranksweep.sweep.settings import DEFAULT_STORAGE_URL

_TRACEBACKS = "HYDRA_FULL_ERROR" in os.environ


class _Parser(argparse.ArgumentParser):
    """argparse with ranksweep's one-line errors."""

    def error(self, message: str):  # type: ignore[override]
        raise RanksweepError(f"{self.prog}: {message}")


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE_URL,
        help=f"Optuna storage URL (default: {DEFAULT_STORAGE_URL}, relative to the current dir)",
    )


def _study_parser(name: str, description: str) -> _Parser:
    """``ranksweep NAME STUDY [--storage URL]``: the parser every one-study subcommand starts from."""
    p = _Parser(prog=f"ranksweep {name}", description=description)
    p.add_argument("study", metavar="STUDY")
    _storage_arg(p)
    return p


def report(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="ranksweep report",
        description="Write a self-contained HTML report (works offline) of one or more sweeps.",
    )
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study name(s); two or more are compared")
    _storage_arg(p)
    p.add_argument("--out", default=None, help="output file (default: outputs/reports/<a>[_vs_<b>...].html)")
    args = p.parse_args(list(argv))
    from ranksweep.report import write_report

    path = write_report(args.studies, args.storage, args.out)
    print(path)
    return 0


def _wandb_cli() -> str:
    here = Path(sys.executable).parent / "wandb"
    return str(here) if here.is_file() else (shutil.which("wandb") or "wandb")


def sync(argv: Sequence[str]) -> int:
    p = _study_parser("sync", "Upload a study's offline W&B runs (one per trial, plus the sweep summary run) "
                      "with `wandb sync`.")
    p.add_argument("--dry-run", action="store_true", help="print the run dirs, upload nothing")
    args, extra = p.parse_known_args(list(argv))
    bad = [a for a in extra if not a.startswith("-")]
    if bad:
        raise RanksweepError(f"ranksweep sync: unrecognized arguments: {' '.join(bad)}")
    from ranksweep.report import wandb_run_dirs

    dirs = wandb_run_dirs(args.study, args.storage)
    if not dirs:
        raise RanksweepError(
            f"study {args.study!r} has no offline W&B runs on disk (logger=none, or the "
            "run dirs were deleted)"
        )
    if args.dry_run:
        for d in dirs:
            print(d)
        return 0
    print(f"syncing {len(dirs)} W&B run(s) of study {args.study!r}", file=sys.stderr, flush=True)
    # Extra options (e.g. --project, --entity, --include-synced) go to `wandb sync` as they are.
    return subprocess.run([_wandb_cli(), "sync", *extra, *[str(d) for d in dirs]], check=False).returncode


def dashboard(argv: Sequence[str]) -> int:
    p = _Parser(prog="ranksweep dashboard", description="Serve the study storage with optuna-dashboard.")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(list(argv))
    if not 0 < args.port < 65536:
        raise RanksweepError(f"ranksweep dashboard: --port must be in 1..65535, got {args.port}")
    from ranksweep.report import open_existing_storage

    # A missing, empty or non-Optuna file is one line; serving must not create or alter a database.
    storage = open_existing_storage(args.storage)
    try:
        from optuna_dashboard import run_server
    except ImportError as exc:  # the [dashboard] extra
        from ranksweep.extras import missing

        raise RanksweepError(missing("dashboard") or f"optuna-dashboard cannot be imported: {exc}") from exc
    print(
        f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True
    )
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # port in use, cannot bind
        raise RanksweepError(f"ranksweep dashboard: cannot serve on {args.host}:{args.port}: {exc}") from exc
    return 0


def estimate(argv: Sequence[str]) -> int:
    """``ranksweep estimate [overrides...]``: a trial's predicted peak memory, by part; downloads nothing."""
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print("usage: ranksweep estimate [hydra overrides ...]   e.g. model=llama3_1_8b trainer=gpu lora.r=16")
        return 0
    bad = [a for a in args if a.startswith("-")]
    if bad:
        raise RanksweepError(f"ranksweep estimate: unrecognized arguments: {' '.join(bad)}")
    from ranksweep.compose import compose, name_follows_id
    from ranksweep.config import to_run_config

    # Building a tiny model or converting the embedded one must not draw progress bars on stderr.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    cfg = compose(args)
    name_follows_id(cfg, args)
    run = to_run_config(cfg)  # a bad override: ConfigError, one line
    from ranksweep.memory import estimate_run, plan_memory, run_device

    device = run_device(run)
    mem = plan_memory(run, device)
    est = mem.estimate if mem.estimate is not None else estimate_run(run)  # raises the one-line reason
    print(f"model {run.model.name} ({run.model.id}), quant {run.quant.name}, device {device}")
    print(est.table())
    if mem.limit_gb is not None:
        verdict = "fits" if mem.fits else "DOES NOT FIT: a sweep skips this trial"
        source = "trainer.memory_limit_gb" if run.trainer.memory_limit_gb else f"{device} memory"
        print(f"  limit {mem.limit_gb:.2f} GB ({source}): {verdict}")
    else:  # planning on another machine than the one that will train (a laptop for a GPU run)
        print(f"  limit: none known (no {device} device here), so nothing is recomputed or skipped; "
              "plan for a card with trainer.memory_limit_gb=GB (e.g. 80)")
    if run.quant.bits in (4, 8):
        print("  (as ranksweep's trial runs it: prepare_model_for_kbit_training upcasts embeddings, "
              "lm_head and norms to fp32)")
    return 0


def export(argv: Sequence[str]) -> int:
    """``ranksweep export STUDY``: the recommended adapter with its model card (``best/``), merged, pushed."""
    p = _study_parser("export", "Write a study's recommended adapter (PEFT format) with its config, metrics, rank "
                      "curve and a model card (README.md); optionally merged into its base in 16-bit, or pushed to "
                      "the Hugging Face Hub.")
    p.add_argument("--ladder", metavar="KEY", help="one ladder (e.g. 'lora.targets=attention'); default: every "
                   "ladder, the best one at the top of --out")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the sweep's best/ folder)")
    p.add_argument("--merge", action="store_true", help="also write DIR/merged/: the adapter merged into a fresh "
                   "16-bit load of the base (bf16 on GPU, the model's dtype or fp32 on CPU), with its tokenizer")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the adapter folder (the merged model with "
                   "--merge) to this Hub model repo; the token comes from HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print the repo, files and model "
                   "card, upload nothing")
    args = p.parse_args(list(argv))
    if (args.private or args.dry_run) and not args.push_to_hub:
        raise RanksweepError("ranksweep export: --private and --dry-run go with --push-to-hub ORG/NAME")
    from ranksweep.deploy import export_study

    export_study(args.study, args.storage, ladder=args.ladder, out=args.out, merge=args.merge,
                 push=args.push_to_hub, private=args.private, dry_run=args.dry_run)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"report": report, "sync": sync, "dashboard": dashboard,
                                                     "estimate": estimate, "export": export}


def main(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run subcommand ``name``; any failure becomes one line on stderr: a :class:`RanksweepError` with its exit
    code (2), anything else (a filesystem error, a damaged storage) with exit code 1."""
    try:
        return COMMANDS[name](list(argv or []))
    except Exception as exc:  # noqa: BLE001 - one line for any failure (HYDRA_FULL_ERROR=1: the traceback)
        if _TRACEBACKS:
            raise
        line, code = describe_failure(exc)
        print(f"ranksweep: error: {line}", file=sys.stderr)
        return code
