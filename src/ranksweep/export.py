"""The best adapter as a deliverable: ``best/`` after every sweep, ``ranksweep export`` anywhere.

A ladder's deliverable is its recommended rank's adapter: the rung's best trial (:attr:`Rung.best`,
else its first trial), copied from the trial's folder into one folder that ``peft`` and the
Hugging Face Hub read as it is::

    adapter_config.json, adapter_model.safetensors   the PEFT adapter (the trial's adapter/)
    config.yaml, metrics.json                        the trial's resolved config and metrics
    rank_curve.png                                   the sweep's rank curve
    README.md                                        a model card: base model, rank, alpha, targets,
                                                     data, eval results, the rank curve and its table

``outputs/sweeps/<study>/best/`` holds it after a sweep. With several ladders, ``best/<ladder>/``
holds each ladder's (folder names made safe: ``lora.targets=attention`` -> ``lora.targets_attention``)
and ``best/`` itself holds the ladder whose recommended rank scored best (its README lists the
others). ``ranksweep export STUDY`` writes the same from the study storage; ``--merge`` adds
``merged/``: the adapter merged into a fresh 16-bit load of the base (never the 4-bit base, which
cannot hold the merge), loadable with plain transformers; ``--push-to-hub ORG/NAME`` uploads the
adapter folder (the merged one with ``--merge``). Those two live in :mod:`ranksweep.deploy`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from ranksweep.errors import RanksweepError
from ranksweep.sweep.results import Ladder, Rung, Trial

__all__ = ["BEST_DIRNAME", "best_rung", "best_trial", "export_ladders", "is_legacy_export", "ladder_slug", "model_card",
           "read_trial_files", "resolve_trial_dir", "sweep_resolver", "winner", "write_best", "write_deliverable"]

log = logging.getLogger("ranksweep.sweep")
BEST_DIRNAME = "best"
PLOT_NAME = "rank_curve.png"
TRIAL_FILES = ("config.yaml", "metrics.json")
# model.id -> the hub model it was made from (for the card's base_model)
EMBEDDED_SOURCES = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

Resolver = Callable[[Optional[str]], Optional[Path]]


def ladder_slug(key: str) -> str:
    """A folder (and artifact alias) name for a ladder key: letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(key or "default")).strip("._") or "default"


def best_rung(lad: Ladder) -> Optional[Rung]:
    rec = lad.recommendation
    if rec is None:
        return None
    return next((r for r in lad.rungs if r.rank == rec.rank and r.complete), None)


def best_trial(lad: Ladder) -> Optional[Trial]:
    """The trial whose adapter a ladder delivers: its recommended rung's best trial, else the rung's first
    finished trial."""
    rung = best_rung(lad)
    if rung is None:
        return None
    if rung.best is not None:
        return rung.best
    done = [t for t in rung.trials if t.objective is not None]
    first = rung.output_dirs[0] if rung.output_dirs else None
    return next((t for t in done if t.output_dir == first), done[0] if done else None)


def winner(ladders: Sequence[Ladder]) -> Optional[int]:
    """The index of the ladder whose recommended rank scored best (direction-aware), None when none has one."""
    scored = [(i, best_rung(lad)) for i, lad in enumerate(ladders)]
    scored = [(i, r) for i, r in scored if r is not None and r.mean is not None and math.isfinite(r.mean)]
    if not scored:
        return None
    sign = {i: (-1.0 if ladders[i].direction == "minimize" else 1.0) for i, _ in scored}
    return max(scored, key=lambda ir: (sign[ir[0]] * float(ir[1].mean), -ir[0]))[0]  # type: ignore[arg-type]


def resolve_trial_dir(path: Optional[str], roots: Sequence[Path] = ()) -> Optional[Path]:
    """A trial's output dir: as is when absolute, else the first of ``roots`` (default: the working dir)
    where it exists."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    for root in list(roots) or [Path.cwd()]:
        if (root / p).is_dir():
            return (root / p).resolve()
    return (Path.cwd() / p).resolve()


def read_trial_files(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's resolved config (``config.yaml``) and ``metrics.json``; empty dicts when missing."""
    import yaml

    cfg: Any = {}
    metrics: Any = {}
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pass
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return (cfg if isinstance(cfg, dict) else {}), (metrics if isinstance(metrics, dict) else {})


# ----------------------------------------------------------------------------- the deliverable folder


def _copy_deliverable(trial_dir: Path, out: Path, plot: Optional[Path]) -> None:
    adapter = trial_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise RanksweepError(f"no adapter in {adapter} (deleted, or the trial never saved one)")
    out.mkdir(parents=True, exist_ok=True)
    for f in adapter.iterdir():
        if f.is_file() and f.name != "README.md":  # peft's template card: ours replaces it
            shutil.copy2(f, out / f.name)
    for name in TRIAL_FILES:
        if (trial_dir / name).is_file():
            shutil.copy2(trial_dir / name, out / name)
    if plot is not None and plot.is_file() and plot.resolve() != (out / PLOT_NAME).resolve():
        shutil.copy2(plot, out / PLOT_NAME)


def write_deliverable(lad: Ladder, trial_dir: Path, out: Path, *, study: str, storage: str = "",
                      plot: Optional[Path] = None, others: Sequence[tuple[Ladder, str]] = ()) -> Path:
    """``out`` holds ``lad``'s recommended adapter, its config, metrics, the rank curve and a model card."""
    from ranksweep.files import atomic_write_text

    _copy_deliverable(trial_dir, out, plot)
    cfg, metrics = read_trial_files(trial_dir)
    card = model_card(lad, cfg, metrics, study=study, storage=storage, others=others,
                      plot=PLOT_NAME if (out / PLOT_NAME).is_file() else None, base_path=adapter_base(out))
    atomic_write_text(out / "README.md", card)
    return out


def adapter_base(folder: Path) -> Optional[str]:
    """``base_model_name_or_path`` of the adapter in ``folder`` (where the trial loaded its base from)."""
    try:
        got = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return str(got) if got else None


def is_legacy_export(folder: Path) -> bool:
    """An export or ``best/`` written before ranksweep marked its folders: a PEFT adapter with ranksweep's card."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8")[:4096]
    except OSError:
        return False
    return (folder / "adapter_config.json").is_file() and "(ranksweep)" in card


def export_ladders(ladders: Sequence[Ladder], out: Path, *, study: str, storage: str = "",
                   plot: Optional[Path] = None, resolve: Resolver = resolve_trial_dir) -> list[tuple[Ladder, Path]]:
    """Write the deliverables of ``ladders`` into the new folder ``out`` (layout: module docstring); returns
    ``(ladder, folder)`` per ladder written, the top-level one first. Ladders without a recommendation
    or whose adapter is gone are left out (logged)."""
    found: list[tuple[Ladder, Path]] = []
    for lad in ladders:
        t = best_trial(lad)
        folder = resolve(t.output_dir) if t is not None else None
        if folder is None or not (folder / "adapter").is_dir():
            log.warning("ladder %s: no recommended adapter to export (%s)", lad.label,
                        "no recommendation" if t is None else f"not found: {t.output_dir}")
            continue
        found.append((lad, folder))
    if not found:
        raise RanksweepError(f"study {study!r}: no ladder has a recommended adapter on disk to export")
    top = winner([lad for lad, _ in found]) or 0
    several = len(found) > 1
    slugs = _unique_slugs([lad.key for lad, _ in found])
    written: list[tuple[Ladder, Path]] = []
    others = [(lad, slugs[i]) for i, (lad, _) in enumerate(found)] if several else []
    lad, folder = found[top]
    written.append((lad, write_deliverable(lad, folder, out, study=study, storage=storage, plot=plot,
                                           others=others)))
    if several:
        for i, (lad, folder) in enumerate(found):
            written.append((lad, write_deliverable(lad, folder, out / slugs[i], study=study, storage=storage,
                                                   plot=plot)))
    return written


def _unique_slugs(keys: Sequence[str]) -> list[str]:
    out: list[str] = []
    for k in keys:
        s = ladder_slug(k)
        while s in out or s in ("merged", "adapter"):
            s += "_"
        out.append(s)
    return out


def sweep_resolver(sweep_dir: Path) -> Resolver:
    """A trial folder of this sweep: its recorded path (relative to the working dir), else by name in ``sweep_dir``."""
    def resolve(path: Optional[str]) -> Optional[Path]:
        got = resolve_trial_dir(path)
        if got is not None and not got.is_dir() and (sweep_dir / got.name).is_dir():
            return sweep_dir / got.name
        return got

    return resolve


def write_best(sweep_dir: Path, ladders: Sequence[Ladder], s: Any) -> Optional[Path]:
    """``<sweep_dir>/best/`` after a sweep (called by :func:`ranksweep.sweep.summary.write_outputs`), built
    beside it and swapped in whole (:func:`ranksweep.ownership.replace_dir`); never fails the sweep: a
    problem is a warning. A ``best/`` that ranksweep did not write is left as it is."""
    from ranksweep.ownership import EXPORT_MARKER, is_ours, replace_dir
    from ranksweep.urls import mask_secrets

    if not any(lad.recommendation for lad in ladders):
        return None
    out = Path(sweep_dir) / BEST_DIRNAME
    if out.exists() and not (out.is_dir() and is_ours(out, EXPORT_MARKER, is_legacy_export)):
        log.warning("best adapter not exported: %s exists and ranksweep did not write it", out)
        return None
    storage = str(mask_secrets(s.storage_url))
    try:
        written = replace_dir(out, lambda tmp: export_ladders(
            ladders, tmp, study=str(s.study_name), storage=storage, plot=Path(sweep_dir) / PLOT_NAME,
            resolve=sweep_resolver(Path(sweep_dir))), EXPORT_MARKER, command="sweep", study=str(s.study_name),
            storage=storage)
    except (RanksweepError, OSError) as exc:
        log.warning("best adapter not exported to %s: %s", out, exc)
        return None
    lad, _ = written[0]
    rec = lad.recommendation
    log.info("best adapter (r=%s, ladder %s): %s", rec.rank if rec else "?", lad.label, out)
    return out


# ----------------------------------------------------------------------------- the model card


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else "-"
    return str(x)


def _hub_id(model_id: str) -> Optional[str]:
    """The hub model an id names (an embedded model: the one it was made from); None for local or tiny models."""
    if model_id in EMBEDDED_SOURCES:
        return EMBEDDED_SOURCES[model_id]
    if ":" in model_id or model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:
        return None
    return model_id


def _front_matter(cfg: dict[str, Any], merged: bool) -> list[str]:
    hub = _hub_id(str((cfg.get("model") or {}).get("id", "")))
    lines = ["---"]
    if hub:
        lines.append(f"base_model: {hub}")
    lines += ([] if merged else ["library_name: peft"]) + ["pipeline_tag: text-generation", "tags:", "- ranksweep",
                                                         "- lora", "- qlora"]
    if hub:
        lines.append(f"- base_model:{'finetune' if merged else 'adapter'}:{hub}")
    return lines + ["---", ""]


def _curve_table(lad: Ladder, rank: int) -> list[str]:
    rows = [f"| rank | alpha | {lad.objective} (mean ± std) | gain over previous rank (95% CI) | share of gain "
            "| trainable params | state |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in lad.rows():
        value = "-" if r.mean is None else f"{r.mean:.4f} ± {(r.std or 0.0):.4f}"
        rows.append(f"| {'**' + str(r.rank) + '**' if r.rank == rank else r.rank} | "
                    f"{'-' if r.alpha is None else f'{r.alpha:g}'} | {value} | "
                    f"{r.gain.short() if r.gain is not None else '-'} | "
                    f"{'-' if r.share is None else f'{100 * r.share:.1f}%'} | {_fmt(r.trainable_params)} | "
                    f"{r.state.name} |")
    if lad.base is not None:
        rows.append(f"| base | - | {lad.base:.4f} | - | - | 0 | untrained |")
    return rows


def _results(lad: Ladder, rung: Rung, metrics: dict[str, Any]) -> list[str]:
    n = len(rung.values)
    lines = [f"- **{lad.objective}** (the sweep's objective, {lad.direction}d): **{rung.mean:.4f}** ± "
             f"{(rung.std or 0.0):.4f} (mean ± std over {n} seed{'s' if n != 1 else ''})"]
    if rung.gain is not None:
        lines.append(f"- gain over the previous rank: {rung.gain.text()}")
    vs_best = getattr(rung, "vs_best", None)
    rec = lad.recommendation
    if vs_best is not None and rec is not None and rec.best_rank != rung.rank:
        lines.append(f"- difference to the best rank: {vs_best.text()}")
    if lad.base is not None:
        lines.append(f"- untrained base: {lad.base:.4f}")
    keys = (("eval_loss", "eval loss"), ("perplexity", "perplexity"), ("token_accuracy", "next-token accuracy"),
            ("exact_match", "exact match"))
    for key, label in keys:
        if isinstance(metrics.get(key), (int, float)):
            extra = f" (n={metrics['exact_match_n']})" if key == "exact_match" and "exact_match_n" in metrics else ""
            lines.append(f"- {label} of this adapter: {_fmt(float(metrics[key]))}{extra}")
    return lines


def _setup(cfg: dict[str, Any], metrics: dict[str, Any], rank: int) -> list[str]:
    model, lora, quant = cfg.get("model") or {}, cfg.get("lora") or {}, cfg.get("quant") or {}
    data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
    alpha = metrics.get("alpha", lora.get("alpha"))
    targets = metrics.get("target_modules")
    alpha_txt = f"{alpha:g}" if isinstance(alpha, (int, float)) else str(alpha)
    bits = quant.get("bits")
    qtxt = "none: a 16-bit base (LoRA)" if bits == 16 else f"{quant.get('name', '?')}, {bits}-bit (QLoRA)"
    data_txt = ", ".join(f"{k}={data[k]}" for k in ("name", "source", "path", "subset", "split", "max_examples",
                                                    "eval_size", "seed") if data.get(k) not in (None, ""))
    return [
        f"- base model: `{model.get('id', '?')}` ({model.get('family', '?')}, {model.get('variant', '?')})",
        f"- quantization of the base while training: {qtxt}",
        f"- LoRA rank r={rank}, alpha={alpha_txt} (alpha_rule={lora.get('alpha_rule', '?')}), "
        f"dropout={lora.get('dropout', '?')}",
        f"- targets: `{lora.get('targets', '?')}`" + (f" -> {', '.join(sorted(set(targets)))}" if targets else ""),
        f"- trainable parameters: {_fmt(metrics.get('trainable_params'))}",
        f"- data: {data_txt or '?'}",
        f"- training: {_fmt(metrics.get('steps', trainer.get('max_steps')))} steps, lr {trainer.get('lr', '?')}, "
        f"micro-batch {trainer.get('micro_batch', '?')} x accumulation {trainer.get('grad_accum', '?')}, "
        f"sequence length {trainer.get('max_seq_len', '?')}, seed {trainer.get('seed', '?')}",
    ]


def _usage(cfg: dict[str, Any], merged: bool, base_path: Optional[str] = None) -> list[str]:
    model_id = str((cfg.get("model") or {}).get("id", "BASE_MODEL"))
    base = _hub_id(model_id) or base_path or model_id
    if merged:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
                'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")']
    else:
        code = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                'model = PeftModel.from_pretrained(base, "PATH_OR_REPO")  # this folder',
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")', "",
                "# for deployment: merged = model.merge_and_unload()  (or `ranksweep export STUDY --merge`)"]
    return ["```python", *code, "```"]


def model_card(lad: Ladder, cfg: dict[str, Any], metrics: dict[str, Any], *, study: str, storage: str = "",
               plot: Optional[str] = PLOT_NAME, others: Sequence[tuple[Ladder, str]] = (),
               merged: bool = False, base_path: Optional[str] = None) -> str:
    """The README.md of a deliverable (Hugging Face model card with YAML front matter). ``base_path``: where
    the base was loaded from (adapter_config.json's), for the usage example of a model not on the Hub."""
    rung, trial = best_rung(lad), best_trial(lad)
    rec = lad.recommendation
    if rung is None or rec is None:
        raise RanksweepError(f"ladder {lad.label}: no recommended rank")
    what = "merged into its base model" if merged else "LoRA adapter"
    out = _front_matter(cfg, merged)
    out += [f"# {study}: rank {rec.rank} {what} (ranksweep)", "",
            f"The rank worth paying for, found by a ranksweep rank ladder (ladder `{lad.label}`): {rec.why}.",
            *([f"Stopped: {lad.stop_reason}."] if lad.stop_reason else []), "",
            "## Model", "", *_setup(cfg, metrics, rec.rank), "", "## Eval results", "", *_results(lad, rung, metrics),
            "", "## Rank curve", ""]
    if plot:
        out += [f"![rank curve]({plot})", ""]
    out += [*_curve_table(lad, rec.rank), ""]
    if others:
        out += ["## Other ladders", "", "| ladder | recommended rank | value | folder |", "|---|---:|---:|---|"]
        for o, slug in others:
            r = best_rung(o)
            out.append(f"| `{o.label}` | {o.recommendation.rank if o.recommendation else '-'} | "
                       f"{'-' if r is None or r.mean is None else f'{r.mean:.4f}'} | [{slug}/]({slug}/) |")
        out.append("")
    out += ["## Use", "", *_usage(cfg, merged, base_path), "", "## Provenance", "",
            f"- study `{study}`" + (f" in `{storage}`" if storage else ""),
            f"- trial {'-' if trial is None else trial.number} ({metrics.get('name') or f'r={rec.rank}'}); "
            f"W&B run: {metrics.get('wandb_run') or '-'}",
            "- files: `config.yaml` (the trial's resolved config), `metrics.json` (its metrics)", ""]
    return "\n".join(out)

