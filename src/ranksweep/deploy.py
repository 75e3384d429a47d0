"""``ranksweep export``: a study's best adapter written anywhere, merged for deployment, pushed to the Hub.

- :func:`export_study` reads the study (like ``ranksweep report``) and writes the deliverables of
  :mod:`ranksweep.export` into ``--out`` (default: the sweep's ``best/``);
- :func:`merge_adapter` loads the base model fresh in 16 bits (bf16 on a GPU; on CPU the model's
  dtype, float32 for ``auto``), applies the adapter with peft, ``merge_and_unload()`` and saves
  the model with its tokenizer: a folder plain ``transformers`` loads;
- :func:`push_to_hub` uploads a folder to a Hub model repo. The token comes from ``HF_TOKEN`` or the
  huggingface_hub login and is never printed; ``dry_run`` prints what would be uploaded.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import RanksweepError
from ranksweep.export import (
    BEST_DIRNAME,
    PLOT_NAME,
    export_ladders,
    is_legacy_export,
    model_card,
    read_trial_files,
    resolve_trial_dir,
)
from ranksweep.sweep.results import Ladder

__all__ = ["export_study", "merge_adapter", "push_to_hub", "token_source"]

Echo = Callable[[str], None]


def _pick(ladders: list[Ladder], key: Optional[str]) -> list[Ladder]:
    if key is None:
        return ladders
    chosen = [lad for lad in ladders if key in (lad.key, lad.label)]
    if not chosen:
        names = ", ".join(repr(lad.key) for lad in ladders)
        raise RanksweepError(f"ranksweep export: --ladder {key!r} is not a ladder of this study (ladders: {names})")
    return chosen


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when the Hub takes it as a model repo id (ORG/NAME), else a one-line error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise RanksweepError(f"ranksweep export: --push-to-hub {repo_id!r} is not a repo id (ORG/NAME): "
                             f"{str(exc).splitlines()[0]}") from None
    return repo_id


def export_study(study: str, storage: str, *, ladder: Optional[str] = None, out: Optional[str] = None,
                 merge: bool = False, push: Optional[str] = None, private: bool = False, dry_run: bool = False,
                 echo: Echo = print) -> Path:
    """Write the study's deliverables (all ladders, or ``ladder``) into ``out``; merge and push on request.
    Returns the folder of the (top) deliverable.

    Every argument is checked before anything is written; ``out`` must be new, empty or an earlier export
    (:mod:`ranksweep.ownership`), and is replaced whole: a crash leaves the old export or the new one."""
    from ranksweep.ownership import EXPORT_MARKER, check_output_dir, replace_dir
    from ranksweep.report.load import load_study_data
    from ranksweep.urls import storage_file

    if push:
        check_repo_id(push)
    data = load_study_data(study, storage)
    ladders = _pick(data.ladders, ladder)
    flag = "--out" if out else f"--out (default: {BEST_DIRNAME}/ of the sweep)"
    target = check_output_dir(out or _default_out(data, study), flag, EXPORT_MARKER, legacy=is_legacy_export,
                              protect=[storage_file(storage), *(() if not out else data.sweep_dirs)])
    rows = {r.number: r for r in data.trials}
    by_dir = {str(r.trial.output_dir): r.output_dir for r in rows.values() if r.trial.output_dir}

    said: list[str] = []

    def build(tmp: Path) -> list[tuple[Ladder, Path]]:
        from ranksweep.plot import rank_curve_png

        plot = rank_curve_png(tmp / PLOT_NAME, data.ladders)
        written = export_ladders(ladders, tmp, study=study, storage=data.storage, plot=plot,
                                 resolve=lambda p: by_dir.get(str(p)) or resolve_trial_dir(p))
        if merge:
            top_lad, top = written[0]
            # echoed once the export is in place, under its final name
            merged = merge_adapter(top, top / "merged", echo=lambda line: said.append(line.replace(str(tmp),
                                                                                                  str(target))))
            cfg, metrics = read_trial_files(top)
            card = model_card(top_lad, cfg, metrics, study=study, storage=data.storage, merged=True,
                              plot=PLOT_NAME if (merged / PLOT_NAME).is_file() else None)
            (merged / "README.md").write_text(card, encoding="utf-8")
        else:
            _keep_merged(target, tmp)
        return [(lad, target / folder.relative_to(tmp)) for lad, folder in written]

    written = replace_dir(target, build, EXPORT_MARKER, command="export", study=study, storage=data.storage)
    for i, (lad, folder) in enumerate(written):
        rec = lad.recommendation
        echo(f"{'best adapter' if i == 0 else '  ladder'} {lad.label}: r={rec.rank if rec else '?'} -> {folder}")
    for line in said:
        echo(line)
    top = written[0][1]
    if push:
        push_to_hub(top / "merged" if merge else top, push, private=private, dry_run=dry_run, echo=echo)
    return top


def _keep_merged(old: Path, new: Path) -> None:
    """An earlier ``--merge`` of the same adapter stays in a new export without ``--merge`` (hard links, so the
    old export is untouched until the swap); a merge of another adapter is dropped."""
    merged = old / "merged"
    if not merged.is_dir() or not (new / "metrics.json").is_file():
        return
    try:
        same = (merged / "metrics.json").read_bytes() == (new / "metrics.json").read_bytes()
    except OSError:
        same = False
    if not same:
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(merged, new / "merged", copy_function=link)


def _default_out(data: Any, study: str) -> Path:
    for d in data.sweep_dirs:
        if (d / "sweep_summary.json").is_file() or (d / BEST_DIRNAME).is_dir():
            return d / BEST_DIRNAME
    return (data.sweep_dirs[0] if data.sweep_dirs else Path("outputs") / "sweeps" / study) / BEST_DIRNAME


# ----------------------------------------------------------------------------- merge


def merge_dtype(model_dtype: str, device: str) -> Any:
    """bf16 (fp16 without bf16) on a GPU; on CPU the model's dtype, float32 for ``auto``."""
    from ranksweep.models import torch_dtype

    return torch_dtype("auto", "cuda") if device == "cuda" else torch_dtype(model_dtype, "cpu")


def merge_adapter(folder: Path, out: Path, device: Optional[str] = None, echo: Echo = print) -> Path:
    """Merge the adapter in ``folder`` (adapter files + the trial's ``config.yaml``) into a fresh 16-bit
    load of its base; save model, tokenizer and the deliverable's card files into ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ranksweep.config import ModelConfig
    from ranksweep.models import load_tokenizer, resolve_model_path

    cfg, _ = read_trial_files(folder)
    m = dict(cfg.get("model") or {})
    if not m.get("id") or not (folder / "adapter_config.json").is_file():
        raise RanksweepError(f"ranksweep export --merge: {folder} has no adapter_config.json and config.yaml")
    model_cfg = ModelConfig(**{k: v for k, v in m.items() if k in ModelConfig.__dataclass_fields__})
    cache = os.environ.get("RANKSWEEP_CACHE") or cfg.get("cache_dir") or os.path.expanduser("~/.cache/ranksweep")
    path = resolve_model_path(model_cfg, os.path.expanduser(str(cache)))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = merge_dtype(model_cfg.dtype, device)
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations, called by peft
        try:
            base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, revision=model_cfg.revision,
                                                        trust_remote_code=model_cfg.trust_remote_code,
                                                        device_map={"": device if device == "cpu" else 0})
            tok = load_tokenizer(path, model_cfg)
        except OSError as exc:
            raise RanksweepError(f"ranksweep export --merge: cannot load the base {model_cfg.id!r}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        out.mkdir(parents=True)  # a new folder: export_study builds the whole export beside the old one
        merged.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    for name in ("config.yaml", "metrics.json", PLOT_NAME):
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
    echo(f"merged: {out} ({str(dtype).replace('torch.', '')}, base {model_cfg.id})")
    return out


# ----------------------------------------------------------------------------- the Hub


def token_source() -> Optional[str]:
    """Where the Hugging Face token would come from (never the token itself)."""
    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    try:
        from huggingface_hub import get_token

        return "the huggingface_hub login (hf auth login)" if get_token() else None
    except Exception:  # noqa: BLE001 - an unreadable token file is no token
        return None


def _files(folder: Path) -> list[Path]:
    """What a push uploads: the files directly in ``folder`` (not other ladders' folders or merged/)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
                echo: Echo = print) -> None:
    """Upload ``folder`` to the model repo ``repo_id`` (created when missing); ``dry_run``: print the repo,
    the files and the model card, upload nothing."""
    check_repo_id(repo_id)
    files = _files(folder)
    source = token_source()
    if dry_run:
        total = sum(p.stat().st_size for p in files)
        echo(f"push to the Hugging Face Hub (dry run: nothing uploaded)\n  repo:   {repo_id} (model, "
             f"{'private' if private else 'public'})\n  token:  "
             + (f"from {source}" if source else "none found: set HF_TOKEN or run `hf auth login`")
             + f"\n  files:  {len(files)} from {folder}, {total / 1e6:.2f} MB")
        for p in files:
            echo(f"    {p.name}  {p.stat().st_size:,} bytes")
        card = folder / "README.md"
        if card.is_file():
            echo("  model card (README.md):\n" + "\n".join("    " + line for line in card.read_text().splitlines()))
        return
    if source is None:
        raise RanksweepError("ranksweep export: no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                             "(--dry-run shows what would be uploaded)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          allow_patterns=[p.name for p in files], commit_message="ranksweep export")
    except Exception as exc:  # noqa: BLE001 - network, permissions: one line, without the token
        raise RanksweepError(f"ranksweep export: push to {repo_id} failed: {str(exc).splitlines()[0]}") from exc
    echo(f"pushed {len(files)} file(s) to {url}")
