"""A self-contained HTML report of one or more rank sweeps (``ranksweep report STUDY...``).

The report works offline: every figure is drawn with matplotlib and inlined as SVG,
the stylesheet and the few lines of JavaScript (table sorting, an error hook) are
inline, and nothing is loaded from the network. It shows, per study:

* per ladder, the objective against the rank on a log2 axis with the spread across
  seeds (error bars and a min/max band), the base model as a reference line, the knee
  and the recommended rank marked;
* cost against quality: wall time, peak memory, trainable parameters and adapter size
  (``adapter/adapter_model.safetensors``) against the objective;
* the eval curves (Optuna's intermediate values);
* why each ladder stopped, and every failed or pruned trial with its reason;
* a table of all trials linking their output dirs and offline W&B runs.

With two or more studies, an overview table and one overlay chart per metric compare
them side by side, followed by one section per study.

Ladders are built from the study with the sweeper's own functions (:mod:`ranksweep.plan`,
:func:`ranksweep.summary.build_ladder`), so a report of a running or interrupted sweep is
current; the sweep's ``sweep_summary.json`` supplies the stop-rule settings (min_gain,
patience, tolerance, max_rank), which the study does not store.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ranksweep.errors import RanksweepError
from ranksweep.storage import DEFAULT_STORAGE_URL
from ranksweep.summary import base_off_axis

__all__ = [
    "StudyData",
    "TrialRow",
    "default_report_path",
    "load_study_data",
    "render_report",
    "write_report",
    "sweep_dirs",
    "wandb_run_dirs",
]

DEFAULT_STORAGE = DEFAULT_STORAGE_URL
SUMMARY_FILENAME = "sweep_summary.json"
ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"


# ----------------------------------------------------------------------------- loading


@dataclass
class TrialRow:
    """One Optuna trial, flattened for the report."""

    number: int
    ladder: str
    rank: int
    seed: int
    role: str
    state: str
    value: Optional[float]
    params: dict[str, Any]
    attrs: dict[str, Any]
    intermediate: dict[int, float]
    output_dir: Optional[Path]
    wandb_run: Optional[str]
    wandb_dir: Optional[Path]
    adapter_mb: Optional[float]
    metrics: dict[str, Any] = field(default_factory=dict)

    def attr_float(self, key: str) -> Optional[float]:
        v = self.attrs.get(key, self.metrics.get(key))
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None


@dataclass
class StudyData:
    """What the report needs from one study."""

    name: str
    storage: str
    direction: str
    objective: str
    space: dict[str, Any]
    trials: list[TrialRow]
    ladders: list[dict]
    summary_path: Optional[Path]
    summary_note: str
    sweep_dirs: list[Path]
    summary_runs: list[Path]


def _mask(url: str) -> str:
    from ranksweep.tracking import mask_secrets

    return str(mask_secrets(url))


def _sqlite_path(url: str) -> Optional[Path]:
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


def _storage_root(url: str) -> Optional[Path]:
    """Where a sweep with this storage ran: the folder holding ``outputs/`` for the default layout."""
    db = _sqlite_path(url)
    if db is None:
        return None
    db = db.resolve()
    return db.parent.parent if db.parent.name == "outputs" else db.parent


def check_optuna_sqlite(db: Path) -> None:
    """Refuse an empty file or an SQLite file that is not an Optuna storage (read-only check)."""
    from ranksweep.storage import check_optuna_sqlite as check

    if db.stat().st_size == 0:
        raise RanksweepError(f"--storage: {db} is empty, not an Optuna database")
    check(db, "--storage")


def open_study(study_name: str, storage_url: str = DEFAULT_STORAGE):
    """Load an existing study; a missing storage file, a corrupt one or an unknown study is one line."""
    import optuna

    from ranksweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = str(storage_url)
    db = _sqlite_path(url)
    if db is not None and not db.is_file():  # do not create an empty database by reading
        raise RanksweepError(f"--storage: no such database: {db} (run a sweep first, or pass --storage URL)")
    journal = url[len("journal://") :] if url.startswith("journal://") else None
    if journal is not None and not Path(journal).expanduser().is_file():
        raise RanksweepError(f"--storage: no such journal file: {journal}")
    if db is not None:
        check_optuna_sqlite(db)
    storage = open_storage(url, heartbeat=False, key="--storage")
    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:  # a file with the SQLite header that is not an Optuna database
        raise RanksweepError(
            f"--storage: cannot read studies from {_mask(url)}: {' '.join(str(exc).split())[:200]}"
        ) from exc
    names = sorted(s.study_name for s in summaries)
    if study_name not in names:
        there = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        raise RanksweepError(f"study {study_name!r} not found in {_mask(url)} (studies there: {there})")
    return optuna.load_study(study_name=study_name, storage=storage)


def _resolve(path: Optional[str], roots: Sequence[Path]) -> Optional[Path]:
    """An absolute path for ``path``: as is when absolute, else the first root where it exists."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    for root in roots:
        if (root / p).exists():
            return (root / p).resolve()
    return (roots[0] / p).resolve() if roots else p.resolve()


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _trial_value(t) -> Optional[float]:
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE and t.value is not None:
        return float(t.value)
    if t.state == TrialState.PRUNED and t.intermediate_values:
        return float(t.intermediate_values[t.last_step])
    return None


def build_ladders(
    study,
    space: dict,
    meta: Optional[dict] = None,
    keys: Optional[Sequence[str]] = None,
    ranks_seen: Sequence[int] = (),
) -> list[dict]:
    """The study's ladders, built from its trials as the sweeper builds them (:func:`ranksweep.plan.build_ladders`).

    The stop-rule settings come from the study's ``ranksweep_settings`` attribute (written by
    the sweeper), else ``meta`` (the ``sweep`` block of ``sweep_summary.json``), else the
    defaults, with max_rank the largest rank that ran.
    """
    from ranksweep import plan
    from ranksweep.ladder import StopRule, rank_ladder

    meta = {**(meta or {}), **(study.user_attrs.get("ranksweep_settings") or {})}
    start = int(space.get("start_rank", 8))
    factor = int(space.get("factor", 2))
    ranks = [int(r) for r in meta.get("ranks") or []]
    max_rank = max([start, *ranks, *[int(r) for r in ranks_seen]])
    rule = StopRule(min_gain=float(meta.get("min_gain", 0.05)), patience=int(meta.get("patience", 2)))
    direction = study.direction.name.lower()
    objective = str(space.get("objective", meta.get("objective", "eval_loss")))
    settings = plan.Settings(ranks=rank_ladder(start, factor, max_rank), seeds=int(space.get("seeds_per_rank", 1)),
                             rule=rule, direction=direction, max_rank=max_rank, factor=factor)
    trials = study.get_trials(deepcopy=False)
    order = [k for k in keys or [] if k]
    order += [k for k in space.get("ladders") or [] if k not in order]
    order += [k for k in dict.fromkeys(t.user_attrs.get("ladder") for t in trials) if k and k not in order]
    specs = [(key, () if key == "default" else tuple(key.split(" "))) for key in order]
    return plan.build_ladders(trials, specs, settings, objective, float(meta.get("tolerance", 0.05)))


def sweep_dirs(study_name: str, storage_url: str, attrs: Sequence[dict]) -> list[Path]:
    """Candidate sweep dirs of a study: parents of its trials' output dirs, then outputs/sweeps/<study>."""
    roots = [Path.cwd()]
    root = _storage_root(storage_url)
    if root is not None and root not in roots:
        roots.append(root)
    found: list[Path] = []
    for a in attrs:
        out = _resolve(a.get("output_dir"), roots)
        if out is not None and out.parent not in found:
            found.append(out.parent)
    for r in roots:
        p = (r / "outputs" / "sweeps" / study_name).resolve()
        if p not in found:
            found.append(p)
    return found


def load_study_data(study_name: str, storage_url: str = DEFAULT_STORAGE) -> StudyData:
    """Everything the report shows for one study; a missing or empty study is a one-line error."""
    study = open_study(study_name, storage_url)
    frozen = study.get_trials(deepcopy=False)
    if not frozen:
        raise RanksweepError(f"study {study_name!r} in {_mask(storage_url)} has no trials")
    space = dict(study.user_attrs.get("ranksweep_space") or {})
    direction = study.direction.name.lower()
    objective = str(space.get("objective") or "objective")
    dirs = sweep_dirs(study_name, storage_url, [t.user_attrs for t in frozen])
    roots = [Path.cwd()] + ([_storage_root(storage_url)] if _storage_root(storage_url) else [])

    rows: list[TrialRow] = []
    for t in sorted(frozen, key=lambda t: t.number):
        a = dict(t.user_attrs)
        out = _resolve(a.get("output_dir"), roots)
        metrics = _read_json(out / "metrics.json") if out is not None else {}
        adapter = out / ADAPTER_FILE if out is not None else None
        adapter_mb = adapter.stat().st_size / 1e6 if adapter is not None and adapter.is_file() else None
        wb = a.get("wandb_run") or metrics.get("wandb_run")
        wb_dir = _resolve(wb, roots) if wb else None
        if wb_dir is not None and not wb_dir.is_dir():
            wb_dir = None  # an online run path (entity/project/id) or a deleted dir
        if not wb and out is not None and (out / "wandb").is_dir():
            # Pruned and failed trials do not record `wandb_run`, but their run is on disk.
            found = sorted(p for p in (out / "wandb").glob("offline-run-*") if p.is_dir())
            wb_dir = found[-1] if found else None
        rank = a.get("rank", t.params.get("rank", 0))
        seed = a.get("seed", t.params.get("seed", 0))
        rows.append(
            TrialRow(
                number=t.number,
                ladder=str(a.get("ladder", "?")),
                rank=int(rank or 0),
                seed=int(seed or 0),
                role=str(a.get("role") or ("base" if not rank else "rung")),
                state=t.state.name,
                value=_trial_value(t),
                params=dict(t.params),
                attrs=a,
                intermediate={int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                output_dir=out,
                wandb_run=str(wb) if wb else None,
                wandb_dir=wb_dir,
                adapter_mb=adapter_mb,
                metrics=metrics,
            )
        )

    # Ladders are rebuilt from the study (the record); the sweep summary supplies the stop-rule settings
    # the study does not store. Without a summary the defaults are assumed (and the report says so).
    summary_path: Optional[Path] = None
    doc: dict = {}
    for d in dirs:
        cand = d / SUMMARY_FILENAME
        if cand.is_file():
            got = _read_json(cand)
            if (got.get("sweep") or {}).get("study_name", study_name) == study_name and got.get("ladders"):
                summary_path, doc = cand, got
                break
    meta = dict(doc.get("sweep") or {})
    try:
        ladders = build_ladders(
            study,
            space,
            meta,
            keys=[lad.get("key") for lad in doc.get("ladders", [])],
            ranks_seen=[r.rank for r in rows],
        )
        note = (
            f"built from the study, with the stop-rule settings of {summary_path}"
            if summary_path
            else f"built from the study; no {SUMMARY_FILENAME} found (sweep interrupted or still running), "
            "so the default stop-rule settings are assumed"
        )
    except (ImportError, AttributeError, TypeError) as exc:  # the sweeper's planning API changed
        if not doc:
            raise RanksweepError(
                f"study {study_name!r}: cannot build its ladders ({exc}) and no {SUMMARY_FILENAME} found"
            ) from exc
        ladders, note = list(doc["ladders"]), f"read from {summary_path}"
    runs: list[Path] = []
    for d in dirs:
        for p in sorted((d / "wandb").glob("offline-run-*")) if (d / "wandb").is_dir() else []:
            if p.is_dir() and p not in runs:
                runs.append(p)
    return StudyData(
        name=study_name,
        storage=_mask(storage_url),
        direction=direction,
        objective=objective,
        space=space,
        trials=rows,
        ladders=ladders,
        summary_path=summary_path,
        summary_note=note,
        sweep_dirs=[d for d in dirs if d.is_dir()],
        summary_runs=runs,
    )


def wandb_run_dirs(study_name: str, storage_url: str = DEFAULT_STORAGE) -> list[Path]:
    """The offline W&B run dirs of a study: one per trial (``wandb_run``), then the sweep's summary run(s)."""
    data = load_study_data(study_name, storage_url)
    out: list[Path] = []
    for r in data.trials:
        if r.wandb_dir is not None and r.wandb_dir not in out:
            out.append(r.wandb_dir)
    for p in data.summary_runs:
        if p not in out:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- figures

_COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
]


class _Figures:
    """matplotlib figures as inline SVG, with ids unique across the page and stable across runs."""

    def __init__(self) -> None:
        self.count = 0

    def new(self, w: float, h: float, ncols: int = 1, nrows: int = 1):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(w, h), dpi=100)
        FigureCanvasAgg(fig)
        axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
        return fig, axes

    def svg(self, fig, label: str) -> str:
        import matplotlib

        self.count += 1
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"ranksweep-fig-{self.count}"}):
            fig.savefig(
                buf,
                format="svg",
                bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
            )
        text = buf.getvalue()
        text = text[text.index("<svg") :]
        text = text.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" class="plot" ', 1)
        return f'<figure class="fig">{text}</figure>'


def _params_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: _params_txt(v) if v > 0 else "0")


def _log2_axis(ax, ranks: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted({int(r) for r in ranks if r and r > 0})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / 1.4, hi * 1.4)
    ax.set_xlabel("LoRA rank r (log2 scale)")
    ax.grid(True, alpha=0.3)


def _legend_below(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            fontsize=7.5,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=min(3, len(handles)),
            frameon=False,
        )


def _better(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def _ladder_figure(figs: _Figures, data: StudyData, lad: dict, color: str) -> str:
    """Objective vs log2(rank): seed values, mean ± std, min/max band, base, knee, recommendation."""
    fig, (ax,) = figs.new(5.6, 3.5)
    rungs = [r for r in lad.get("rungs", []) if r.get("values")]
    done = [r for r in rungs if r.get("state") == "COMPLETE" and r.get("mean") is not None]
    bad = [r for r in rungs if r.get("state") != "COMPLETE"]
    ranks = [int(r["rank"]) for r in lad.get("rungs", [])]
    if done:
        xs = [int(r["rank"]) for r in done]
        ys = [float(r["mean"]) for r in done]
        lo = [min(r["values"]) for r in done]
        hi = [max(r["values"]) for r in done]
        if any(h > low for h, low in zip(hi, lo)):
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0, label="min-max over seeds")
        ax.errorbar(
            xs,
            ys,
            yerr=[float(r.get("std") or 0.0) for r in done],
            color=color,
            marker="o",
            capsize=4,
            lw=2,
            label="mean ± std",
        )
        seeds_x = [int(r["rank"]) for r in done for _ in r["values"]]
        seeds_y = [float(v) for r in done for v in r["values"]]
        if len(seeds_y) > len(ys):
            ax.scatter(seeds_x, seeds_y, s=14, color=color, alpha=0.55, zorder=3, label="each seed")
        by_rank = dict(zip(xs, ys))
        knee = lad.get("knee")
        if knee in by_rank:
            ax.plot(
                [knee],
                [by_rank[knee]],
                marker="o",
                ms=16,
                mfc="none",
                mec="black",
                mew=1.6,
                ls="none",
                label=f"knee r={knee}",
            )
        rec = lad.get("recommendation") or {}
        if rec.get("rank") in by_rank:
            ax.plot(
                [rec["rank"]],
                [by_rank[rec["rank"]]],
                marker="*",
                ms=20,
                color="gold",
                mec="black",
                ls="none",
                zorder=5,
                label=f"recommended r={rec['rank']}",
            )
            ax.axvline(rec["rank"], color="goldenrod", ls=":", lw=1)
    if bad:
        ax.plot(
            [int(r["rank"]) for r in bad],
            [float(r["mean"]) if r.get("mean") is not None else min(r["values"]) for r in bad],
            marker="x",
            color="grey",
            ls="none",
            ms=9,
            mew=2,
            label="pruned / failed",
        )
    if lad.get("base") is not None:
        base = float(lad["base"])
        if base_off_axis(base, [float(r["mean"]) for r in done]):
            ax.plot([], [], color="black", ls="--", lw=1.2, label=f"base (untrained) {base:.4g}, off the axis")
        else:
            ax.axhline(base, color="black", ls="--", lw=1.2, label=f"base (untrained) {base:.4g}")
    _log2_axis(ax, ranks)
    ax.set_ylabel(f"{lad.get('objective', data.objective)} ({_better(lad.get('direction', data.direction))})")
    ax.set_title(f"{data.name}: {lad.get('key') or 'default'}", fontsize=10)
    if not rungs and lad.get("base") is None:
        ax.text(0.5, 0.5, "no finished rank", transform=ax.transAxes, ha="center", va="center")
    _legend_below(ax)
    return figs.svg(fig, f"{lad.get('objective', 'objective')} against rank for {data.name} {lad.get('key')}")


_COST_AXES = (
    ("duration_s", "wall time (s)"),
    ("peak_mem_gb", "peak memory (GB)"),
    ("trainable_params", "trainable parameters"),
    ("adapter_mb", "adapter size (MB)"),
)


def _cost(row: TrialRow, key: str) -> Optional[float]:
    return row.adapter_mb if key == "adapter_mb" else row.attr_float(key)


def _cost_figure(figs: _Figures, data: StudyData, ladder_colors: dict[str, str]) -> str:
    """The objective against each cost: a point per finished rung trial, a line through each rank's mean."""
    fig, axes = figs.new(10.5, 6.6, ncols=2, nrows=2)
    rows = [r for r in data.trials if r.role == "rung" and r.value is not None]
    base = {r.ladder: r.value for r in data.trials if r.role == "base" and r.value is not None}
    for ax, (key, label) in zip(axes, _COST_AXES):
        any_point = False
        for lad, color in ladder_colors.items():
            pts = sorted(
                (
                    (c, r.value, r.rank, r.state)
                    for r in rows
                    if r.ladder == lad
                    for c in [_cost(r, key)]
                    if c is not None
                ),
                key=lambda p: (p[2], p[0]),
            )
            if not pts:
                continue
            any_point = True
            ok = [p for p in pts if p[3] == "COMPLETE"]
            # each seed a point; the line joins each rank's mean (cost, objective)
            ax.scatter([p[0] for p in ok], [p[1] for p in ok], color=color, s=16, alpha=0.6, zorder=3)
            by_rank: dict[int, list[tuple[float, float]]] = {}
            for x, y, rank, _ in ok:
                by_rank.setdefault(rank, []).append((x, y))
            means = [
                (sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v), rank)
                for rank, v in sorted(by_rank.items())
            ]
            ax.plot([m[0] for m in means], [m[1] for m in means], color=color, marker="o", lw=1.4, label=lad)
            other = [p for p in pts if p[3] != "COMPLETE"]
            if other:
                ax.plot([p[0] for p in other], [p[1] for p in other], color="grey", marker="x", ls="none")
            for x, y, rank in means:
                ax.annotate(
                    f"r{rank}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5, color=color
                )
            if lad in base and base[lad] is not None:
                ax.axhline(base[lad], color=color, ls="--", lw=0.9, alpha=0.7)
        if key == "trainable_params":
            ax.xaxis.set_major_formatter(_params_formatter())
        ax.set_xlabel(label)
        ax.set_ylabel(data.objective)
        ax.grid(True, alpha=0.3)
        if not any_point:
            ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center", va="center")
    axes[0].legend(fontsize=7.5, loc="best")
    fig.suptitle(
        f"{data.name}: cost against quality ({data.objective}, {_better(data.direction)}; dashed: base)",
        fontsize=10,
    )
    fig.tight_layout()
    return figs.svg(fig, f"cost against quality for {data.name}")


def _curves_figure(figs: _Figures, data: StudyData, ladder_colors: dict[str, str]) -> Optional[str]:
    """Eval values during training (Optuna's intermediate values), one line per rung trial."""
    rows = [r for r in data.trials if r.role == "rung" and r.intermediate]
    if not rows:
        return None
    fig, (ax,) = figs.new(5.6, 3.5)
    styles = ["-", "--", ":", "-."]
    seen: set[str] = set()
    for r in rows:
        steps = sorted(r.intermediate)
        color = ladder_colors.get(r.ladder, "grey")
        lab = r.ladder if r.ladder not in seen else None
        seen.add(r.ladder)
        ax.plot(
            steps,
            [r.intermediate[s] for s in steps],
            color=color,
            ls=styles[r.seed % len(styles)],
            marker=".",
            lw=1.0 + 0.25 * math.log2(max(r.rank, 1)),
            alpha=0.8,
            label=lab,
        )
        ax.annotate(
            f"r{r.rank}",
            (steps[-1], r.intermediate[steps[-1]]),
            textcoords="offset points",
            xytext=(3, 0),
            fontsize=7,
            color=color,
        )
    ax.set_xlabel("step")
    ax.set_ylabel(f"eval {data.objective}")
    ax.set_title(f"{data.name}: eval during training (line width grows with rank)", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return figs.svg(fig, f"eval curves for {data.name}")


_OVERLAY_METRICS = (
    ("objective", None),
    ("duration_s", "wall time (s, summed over seeds)"),
    ("peak_mem_gb", "peak memory (GB)"),
    ("trainable_params", "trainable parameters"),
    ("adapter_mb", "adapter size (MB)"),
)


def _overlay_figures(figs: _Figures, studies: Sequence[StudyData]) -> list[str]:
    """One chart per metric with every (study, ladder) as a line, against log2(rank)."""
    out = []
    objectives = sorted({(s.objective, s.direction) for s in studies})
    metrics: list[tuple[str, str, Optional[tuple[str, str]]]] = [
        ("objective", f"{o} ({_better(d)})", (o, d)) for o, d in objectives
    ]
    metrics += [(k, label, None) for k, label in _OVERLAY_METRICS[1:]]
    markers = ["o", "s", "^", "D", "v", "P"]
    for key, label, obj in metrics:
        fig, (ax,) = figs.new(5.6, 3.5)
        ranks: set[int] = set()
        any_line = False
        for si, s in enumerate(studies):
            if obj is not None and (s.objective, s.direction) != obj:
                continue
            for li, lad in enumerate(s.ladders):
                color = _COLORS[(si * 3 + li) % len(_COLORS)]
                ls = ["-", "--", ":", "-."][si % 4]
                name = f"{s.name} / {lad.get('key') or 'default'}"
                if key == "objective":
                    done = [
                        r
                        for r in lad.get("rungs", [])
                        if r.get("state") == "COMPLETE" and r.get("mean") is not None
                    ]
                    if not done:
                        continue
                    xs = [int(r["rank"]) for r in done]
                    ax.errorbar(
                        xs,
                        [float(r["mean"]) for r in done],
                        yerr=[float(r.get("std") or 0.0) for r in done],
                        color=color,
                        ls=ls,
                        marker=markers[si % len(markers)],
                        capsize=3,
                        lw=1.8,
                        label=name,
                    )
                    if lad.get("base") is not None and not base_off_axis(
                            float(lad["base"]), [float(r["mean"]) for r in done]):
                        ax.axhline(float(lad["base"]), color=color, ls=ls, lw=0.8, alpha=0.6)
                    rec = (lad.get("recommendation") or {}).get("rank")
                    means = dict(zip(xs, [float(r["mean"]) for r in done]))
                    if rec in means:
                        ax.plot(
                            [rec],
                            [means[rec]],
                            marker="*",
                            ms=16,
                            color="gold",
                            mec=color,
                            mew=1.5,
                            ls="none",
                            zorder=5,
                        )
                else:
                    pts: dict[int, list[float]] = {}
                    for r in s.trials:
                        if r.role == "rung" and r.ladder == lad.get("key"):
                            v = _cost(r, key)
                            if v is not None:
                                pts.setdefault(r.rank, []).append(v)
                    if not pts:
                        continue
                    xs = sorted(pts)
                    agg = (lambda v: sum(v)) if key == "duration_s" else (lambda v: max(v))
                    ax.plot(
                        xs,
                        [agg(pts[x]) for x in xs],
                        color=color,
                        ls=ls,
                        marker=markers[si % len(markers)],
                        lw=1.8,
                        label=name,
                    )
                ranks.update(xs)
                any_line = True
        if not any_line:
            continue
        if key == "trainable_params":
            ax.yaxis.set_major_formatter(_params_formatter())
        _log2_axis(ax, sorted(ranks))
        ax.set_ylabel(label)
        ax.set_title(
            ("objective" if key == "objective" else label)
            + " against rank, all studies"
            + (" (star: recommended; thin lines: base)" if key == "objective" else ""),
            fontsize=9.5,
        )
        _legend_below(ax)
        out.append(figs.svg(fig, f"{label} against rank, all studies"))
    return out


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9;font-size:14px}
header{background:#1b2a41;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3e0;font-size:13px}
main{padding:8px 24px 40px}
section.study,section.overview{background:#fff;border:1px solid #dde1e6;border-radius:8px;
padding:4px 18px 14px;margin:18px 0}
h2{font-size:19px;border-bottom:2px solid #1b2a41;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.figs{display:flex;flex-wrap:wrap;gap:10px}
figure.fig{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:4px;max-width:100%}
figure.fig svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0;background:#fff}
th,td{border:1px solid #d8dce2;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5;cursor:pointer;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.COMPLETE td.state{color:#11703a}tr.FAIL td.state{color:#b42318;font-weight:600}
tr.PRUNED td.state{color:#9a6700}tr.RUNNING td.state{color:#1f5fbf}tr.rec{background:#fff8d6}
.muted{color:#667085}.why{font-size:12.5px}.reason{color:#b42318}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
code{background:#eef1f5;padding:0 3px;border-radius:3px}
table.trials td{white-space:nowrap}
#js-errors{display:none;background:#fee;color:#900;padding:6px 24px}
.scroll{overflow-x:auto}
"""

# Defined first in <head>: any script error is written into the page (tests read it from the DOM).
_JS_HOOK = """
window.__rsErrors=[];
window.onerror=function(msg,src,line){window.__rsErrors.push(msg+' @'+line);
var e=document.getElementById('js-errors');
if(e){e.style.display='block';e.textContent+=msg+' @'+line+'\\n';}};
"""

_JS_MAIN = """
(function(){
function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?n:v.toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('th').forEach(function(th,i){th.title='sort';th.addEventListener('click',function(){
var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.getAttribute('data-asc')!=='1';
rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:x>y?1:0)*(asc?1:-1);});
rows.forEach(function(r){body.appendChild(r);});th.setAttribute('data-asc',asc?'1':'0');});});});
var s=document.getElementById('report-status');if(s)s.textContent='ready';
})();
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(v: Optional[float], fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '<td class="num" data-sort="">-</td>'
    return f'<td class="num" data-sort="{v}">{_e(fmt.format(v))}</td>'


def _params_txt(n: Optional[float]) -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suf}"
    return f"{int(n)}"


def _link(path: Optional[Path], text: str) -> str:
    if path is None:
        return '<span class="muted">-</span>'
    if path.exists():
        return f'<a href="{_e(path.resolve().as_uri())}" title="{_e(path)}">{_e(text)}</a>'
    return f'<span class="muted" title="{_e(path)} (missing)">{_e(text)} (missing)</span>'


def _overview_table(studies: Sequence[StudyData]) -> str:
    head = (
        "study",
        "ladder",
        "objective",
        "base",
        "best",
        "recommended r",
        "knee",
        "best r",
        "trials",
        "stopped because",
        "why",
    )
    out = [
        '<div class="scroll"><table class="sortable overview"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for s in studies:
        for lad in s.ladders:
            rec = lad.get("recommendation") or {}
            means = [
                float(r["mean"])
                for r in lad.get("rungs", [])
                if r.get("state") == "COMPLETE" and r.get("mean") is not None
            ]
            best = (min(means) if s.direction == "minimize" else max(means)) if means else None
            n = sum(1 for r in s.trials if r.ladder == lad.get("key"))
            out.append(
                f'<tr><td><a href="#study-{_e(s.name)}">{_e(s.name)}</a></td><td>{_e(lad.get("key"))}</td>'
                f"<td>{_e(lad.get('objective'))} ({_e(lad.get('direction'))})</td>"
                + _num(lad.get("base"))
                + _num(best)
                + f'<td class="num"><b>{_e(rec.get("rank", "-"))}</b></td>'
                f'<td class="num">{_e(lad.get("knee") if lad.get("knee") is not None else "-")}</td>'
                f'<td class="num">{_e(rec.get("best_rank", "-"))}</td><td class="num">{n}</td>'
                f"<td>{_e(lad.get('stop_reason'))}</td>"
                f'<td class="why">{_e(rec.get("why", "no rank completed"))}</td></tr>'
            )
    out.append("</tbody></table></div>")
    return "".join(out)


def _trials_table(s: StudyData) -> str:
    recs = {(lad.get("key"), (lad.get("recommendation") or {}).get("rank")) for lad in s.ladders}
    mem_kind = next(
        (r.metrics.get("peak_mem_kind") for r in s.trials if r.metrics.get("peak_mem_kind")), None
    )
    head = [
        "#",
        "ladder",
        "rank",
        "seed",
        "role",
        "state",
        s.objective,
        "exact match",
        "alpha",
        "trainable params",
        "time (s)",
        f"peak mem (GB{', ' + mem_kind if mem_kind else ''})",
        "tok/s",
        "adapter MB",
        "output dir",
        "W&B run",
    ]
    out = [
        '<div class="scroll"><table class="sortable trials"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for r in s.trials:
        cls = r.state + (" rec" if (r.ladder, r.rank) in recs else "")
        em = r.attr_float("exact_match")
        tp = r.attr_float("trainable_params")
        out.append(
            f'<tr class="{_e(cls)}" data-trial="{r.number}"><td class="num">{r.number}</td>'
            f"<td>{_e(r.ladder)}</td>"
            f'<td class="num" data-sort="{r.rank}">{r.rank if r.role != "base" else "base"}</td>'
            f'<td class="num">{r.seed}</td><td>{_e(r.role)}</td><td class="state">{_e(r.state)}</td>'
            + _num(r.value)
            + _num(em, "{:.3f}")
            + _num(r.attr_float("alpha"), "{:g}")
            + (
                f'<td class="num" data-sort="{tp}">{_params_txt(tp)}</td>'
                if tp is not None
                else '<td class="num" data-sort="">-</td>'
            )
            + _num(r.attr_float("duration_s"), "{:.1f}")
            + _num(r.attr_float("peak_mem_gb"), "{:.3f}")
            + _num(r.attr_float("tokens_per_s"), "{:.0f}")
            + _num(r.adapter_mb, "{:.3f}")
            + f"<td>{_link(r.output_dir, r.output_dir.name if r.output_dir else '-')}</td>"
            + f"<td>{_link(r.wandb_dir, r.wandb_dir.name if r.wandb_dir else (r.wandb_run or '-'))}</td></tr>"
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _failures(s: StudyData) -> str:
    parts = ["<h3>Why each ladder stopped</h3><ul>"]
    for lad in s.ladders:
        rec = lad.get("recommendation") or {}
        parts.append(
            f"<li><b>{_e(lad.get('key'))}</b>: {_e(lad.get('stop_reason') or 'unknown')}"
            + (
                f' &mdash; recommended <b>r={_e(rec["rank"])}</b>: <span class="why">{_e(rec.get("why"))}'
                "</span>"
                if rec
                else " &mdash; no rank completed"
            )
            + "</li>"
        )
    parts.append("</ul>")
    bad = [r for r in s.trials if r.state not in ("COMPLETE",)]
    parts.append("<h3>Failed, pruned and unfinished trials</h3>")
    if not bad:
        parts.append('<p class="muted failures-none">none: every trial completed.</p>')
        return "".join(parts)
    parts.append(
        '<table class="failures"><thead><tr><th>#</th><th>ladder</th><th>rank</th><th>seed</th>'
        "<th>state</th><th>kind</th><th>reason</th></tr></thead><tbody>"
    )
    for r in bad:
        if r.state == "PRUNED":
            reason = r.attrs.get("fail_reason") or (
                f"behind its parent rank (trial {r.attrs.get('parent_trial_number')}) late in training; "
                f"last eval {r.value:.4g}"
                if r.value is not None
                else "pruned"
            )
        elif r.state == "FAIL":
            reason = r.attrs.get("fail_reason") or "no reason recorded (worker killed? heartbeat went stale)"
        else:
            reason = "not finished (running, or its worker died)"
        parts.append(
            f'<tr class="{_e(r.state)}"><td class="num">{r.number}</td><td>{_e(r.ladder)}</td>'
            f'<td class="num">{r.rank}</td><td class="num">{r.seed}</td><td class="state">{_e(r.state)}'
            f'</td><td>{_e(r.attrs.get("failure_kind", "-"))}</td><td class="reason">{_e(reason)}</td></tr>'
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def _study_section(figs: _Figures, s: StudyData, index: int) -> str:
    ladder_colors = {
        lad.get("key"): _COLORS[(index * 3 + i) % len(_COLORS)] for i, lad in enumerate(s.ladders)
    }
    for r in s.trials:
        ladder_colors.setdefault(r.ladder, _COLORS[len(ladder_colors) % len(_COLORS)])
    space = s.space
    counts: dict[str, int] = {}
    for r in s.trials:
        counts[r.state] = counts.get(r.state, 0) + 1
    links = " ".join(
        _link(p, f"{p.name}/wandb/{q.name}")
        for p in s.sweep_dirs
        for q in s.summary_runs
        if q.parent.parent == p
    )
    parts = [
        f'<section class="study" id="study-{_e(s.name)}"><h2>Study <code>{_e(s.name)}</code></h2>',
        f"<p>storage <code>{_e(s.storage)}</code>; objective <b>{_e(s.objective)}</b> ({_e(s.direction)}); "
        f"start rank {_e(space.get('start_rank', '-'))}, factor {_e(space.get('factor', '-'))}, "
        f"{_e(space.get('seeds_per_rank', '-'))} seed(s) per rank; "
        f"{len(s.trials)} trials ("
        + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        + ")."
        + (f"<br>fixed overrides: <code>{_e(' '.join(space.get('fixed') or []) or 'none')}</code>")
        + f'<br><span class="muted">ladders {_e(s.summary_note)}.</span>'
        + (f"<br>sweep summary W&B run: {links}" if links else "")
        + "</p>",
        '<h3>Objective against rank, per ladder</h3><div class="figs">',
    ]
    for lad in s.ladders:
        parts.append(_ladder_figure(figs, s, lad, ladder_colors.get(lad.get("key"), _COLORS[0])))
    parts.append('</div><h3>Cost against quality</h3><div class="figs">')
    parts.append(_cost_figure(figs, s, ladder_colors))
    curves = _curves_figure(figs, s, ladder_colors)
    parts.append("</div>")
    if curves:
        parts.append(f'<h3>Eval during training</h3><div class="figs">{curves}</div>')
    parts.append(_failures(s))
    parts.append(f"<h3>All trials</h3>{_trials_table(s)}</section>")
    return "".join(parts)


def render_report(studies: Sequence[StudyData]) -> str:
    """The report as one HTML document (no external resources)."""
    import matplotlib

    figs = _Figures()
    names = [s.name for s in studies]
    title = "ranksweep report: " + " vs ".join(names)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    with matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10}):
        overview = _overview_table(studies)
        overlays = _overlay_figures(figs, studies) if sum(len(s.ladders) for s in studies) > 1 else []
        sections = [_study_section(figs, s, i) for i, s in enumerate(studies)]
    comp = "Comparison" if len(studies) > 1 else "Overview"
    body = [
        f"<header><h1>{_e(title)}</h1><p>generated {now} &middot; {len(studies)} stud"
        f"{'y' if len(studies) == 1 else 'ies'} &middot; "
        + " &middot; ".join(f'<a style="color:#fff" href="#study-{_e(n)}">{_e(n)}</a>' for n in names)
        + ' &middot; <span id="report-status">loading</span></p></header>',
        '<div id="js-errors"></div><main>',
        f'<section class="overview" id="overview"><h2>{comp}</h2>{overview}',
        '<div class="figs">' + "".join(overlays) + "</div></section>",
    ]
    if len(studies) > 1:
        body.append('<div class="side-note muted">Per-study sections follow, in the order given.</div>')
    body += sections
    body.append("</main>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="ranksweep report">'
        f"<title>{_e(title)}</title><style>{_CSS}</style><script>{_JS_HOOK}</script></head>\n<body>"
        + "\n".join(body)
        + f"<script>{_JS_MAIN}</script></body></html>\n"
    )


def default_report_path(study_names: Sequence[str], root: str | os.PathLike = "outputs") -> Path:
    """``outputs/reports/<study1>[_vs_<study2>...].html`` (unsafe characters replaced)."""
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in n) for n in study_names]
    return Path(root) / "reports" / ("_vs_".join(safe) + ".html")


def write_report(
    study_names: Sequence[str], storage_url: str = DEFAULT_STORAGE, out: Optional[str | os.PathLike] = None
) -> Path:
    """Load the studies, render the report and write it (atomically); return its path."""
    if not study_names:
        raise RanksweepError("report: name at least one study")
    dup = sorted({n for n in study_names if list(study_names).count(n) > 1})
    if dup:
        raise RanksweepError(f"report: study named twice: {', '.join(dup)}")
    studies = [load_study_data(n, storage_url) for n in study_names]
    text = render_report(studies)
    target = Path(out) if out else default_report_path(study_names)
    if target.is_dir():
        target = target / default_report_path(study_names).name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, target)
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
