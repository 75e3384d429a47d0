"""What a sweep leaves behind: ``sweep_summary.json``, a rank-curve PNG and a text table.

A sweep runs one *ladder* per combination of the non-rank overrides (e.g.
``targets=all_linear quant=nf4``); each ladder is a :class:`Ladder` dict, built
with :func:`build_ladder`, which fills in the knee and the recommendation from
:mod:`ranksweep.ladder` using the ``COMPLETE`` rungs only. Then:

* :func:`write_summary` writes the ladders to ``sweep_summary.json``;
* :func:`plot_rank_curve` draws objective vs rank (log2 axis) with cost;
* :func:`format_table` renders a short plain-text table for the terminal.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from ranksweep.ladder import gain_shares, recommend

__all__ = [
    "SUMMARY_FILENAME",
    "Ladder",
    "RecommendationDict",
    "Rung",
    "build_ladder",
    "format_table",
    "ladder_summary",
    "plot_rank_curve",
    "write_summary",
]

SUMMARY_FILENAME = "sweep_summary.json"
SCHEMA_VERSION = 1

State = Literal["COMPLETE", "PRUNED", "FAIL"]


class Rung(TypedDict):
    """One rank of a ladder (all its seeds).

    ``values`` holds the objective per seed (finished seeds only), ``mean`` and
    ``std`` (sample std, 0.0 for one seed) summarise them (``None`` without
    values); ``trial_numbers`` are the Optuna trial numbers; ``trainable_params``
    counts the adapter's parameters; ``duration_s`` is wall time summed over
    seeds; ``peak_mem_gb`` the highest peak GPU memory; ``state`` is
    ``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"`` and ``fail_reason`` says why for
    the latter two (``None`` otherwise).
    """

    rank: int
    alpha: float
    values: list[float]
    mean: float | None
    std: float | None
    trial_numbers: list[int]
    trainable_params: int | None
    duration_s: float | None
    peak_mem_gb: float | None
    state: State
    fail_reason: str | None


class RecommendationDict(TypedDict):
    """:class:`ranksweep.ladder.Recommendation` as a dict."""

    rank: int
    knee: int | None
    best_rank: int
    tolerance_abs: float
    why: str


class Ladder(TypedDict):
    """One ladder: the rungs of one combination of non-rank overrides.

    ``key`` labels the non-rank overrides (``"targets=all_linear quant=nf4"``);
    ``direction`` is ``"minimize"`` or ``"maximize"``; ``objective`` names the
    objective (``"eval_loss"``); ``base`` is the untrained base model's
    objective (``None`` when not measured); ``rungs`` in increasing rank;
    ``stop_reason`` is :attr:`ranksweep.ladder.Decision.reason`;
    ``recommendation`` (``None`` when no rung completed) and ``knee`` come
    from :func:`ranksweep.ladder.recommend`.
    """

    key: str
    direction: str
    objective: str
    base: float | None
    rungs: list[Rung]
    stop_reason: str
    recommendation: RecommendationDict | None
    knee: int | None


def _mean_of(rung: Rung) -> float:
    mean = rung.get("mean")
    if mean is None:
        raise ValueError(f"rung r={rung['rank']} has no mean")
    return float(mean)


def _complete(rungs: Sequence[Rung]) -> list[Rung]:
    return [r for r in rungs if r["state"] == "COMPLETE" and r.get("mean") is not None]


def build_ladder(
    key: str,
    direction: str,
    objective: str,
    base: float | None,
    rungs: Sequence[Rung],
    stop_reason: str,
    tolerance: float = 0.05,
) -> Ladder:
    """Assemble a :class:`Ladder`, filling ``recommendation`` and ``knee``.

    Only ``COMPLETE`` rungs (with a mean) enter the recommendation; with none,
    ``recommendation`` and ``knee`` are ``None``. Rungs are sorted by rank.
    """
    ordered = sorted(rungs, key=lambda r: r["rank"])
    done = _complete(ordered)
    rec: RecommendationDict | None = None
    knee: int | None = None
    if done:
        ranks = [r["rank"] for r in done]
        means = [_mean_of(r) for r in done]
        res = recommend(base, ranks, means, direction, tolerance=tolerance)
        rec = RecommendationDict(
            rank=res.rank,
            knee=res.knee,
            best_rank=res.best_rank,
            tolerance_abs=res.tolerance_abs,
            why=res.why,
        )
        knee = res.knee
    return Ladder(
        key=key,
        direction=direction,
        objective=objective,
        base=base,
        rungs=[cast(Rung, dict(r)) for r in ordered],
        stop_reason=stop_reason,
        recommendation=rec,
        knee=knee,
    )


# --------------------------------------------------------------------------- JSON


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats (NaN loss of a failed trial) become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy scalars
        return _jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to {SUMMARY_FILENAME}")


def ladder_summary(ladders: Sequence[Ladder], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document written to ``sweep_summary.json``: ``{"schema_version": 1, "ladders": [...], "sweep": meta}``.

    Plain JSON types only; NaN and infinities become ``null``. ``meta`` (study
    name, storage, ladder settings) goes under ``sweep`` when given.
    """
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "ladders": _jsonable(list(ladders))}
    if meta is not None:
        doc["sweep"] = _jsonable(meta)
    return doc


def write_summary(path: str | os.PathLike[str], ladders: Sequence[Ladder], meta: dict[str, Any] | None = None) -> Path:
    """Write :func:`ladder_summary` as JSON to ``path`` atomically; return the file written.

    ``path`` is the file, or an existing directory to write ``sweep_summary.json``
    into. Keys are sorted and indented by 2 so that reruns diff cleanly; the
    text goes to a temporary file in the same directory first and then replaces
    the target with :func:`os.replace`, so a reader never sees half a file.
    """
    target = Path(path)
    if target.is_dir():
        target = target / SUMMARY_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ladder_summary(ladders, meta), indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


# --------------------------------------------------------------------------- plot


def base_off_axis(base: float, means: Sequence[float]) -> bool:
    """Whether the base value is so far off the curve (e.g. before the task's format is learnt) that a
    line there would flatten it: farther from every rank's mean than 3x their spread. Plots then name
    the base in the legend instead of drawing it."""
    means = [float(m) for m in means]
    span = (max(means) - min(means)) if len(means) > 1 else 0.0
    return bool(means) and span > 0 and min(abs(base - m) for m in means) > 3 * span


def plot_rank_curve(path_png: str | os.PathLike[str], ladders: Sequence[Ladder]) -> Path:
    """Draw objective vs rank for every ladder into a PNG; return its path.

    Per ladder: the mean objective of the COMPLETE rungs on a log2 rank axis with
    seed-std error bars, the base model as a dashed horizontal line, the knee
    (open circle) and the recommended rank (star) marked, and on a second y axis
    the cost, trainable parameters in millions (dotted). PRUNED/FAIL rungs
    with a value are drawn as grey crosses. The title states the recommendation.

    Renders with the Agg canvas on a private :class:`~matplotlib.figure.Figure`,
    so no pyplot state, backend or rcParams are touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    target = Path(path_png)
    target.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(9, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cost_ax = ax.twinx()
    colors = [f"C{i % 10}" for i in range(max(len(ladders), 1))]

    all_ranks: set[int] = set()
    titles: list[str] = []
    objectives: list[str] = []
    have_cost = False
    for lad, color in zip(ladders, colors):
        done = _complete(lad["rungs"])
        label = lad["key"] or "default"
        objectives.append(lad["objective"])
        if done:
            xs = [r["rank"] for r in done]
            ys = [_mean_of(r) for r in done]
            es = [float(r["std"] or 0.0) for r in done]
            all_ranks.update(xs)
            ax.errorbar(xs, ys, yerr=es, color=color, marker="o", capsize=3, lw=1.8, label=label)
            by_rank = dict(zip(xs, ys))
            knee = lad.get("knee")
            if knee in by_rank:
                ax.plot(
                    [knee],
                    [by_rank[knee]],
                    marker="o",
                    ms=14,
                    mfc="none",
                    mec=color,
                    mew=2,
                    ls="none",
                    label=f"knee r={knee}",
                )
            rec = lad.get("recommendation")
            if rec and rec["rank"] in by_rank:
                ax.plot(
                    [rec["rank"]],
                    [by_rank[rec["rank"]]],
                    marker="*",
                    ms=18,
                    color=color,
                    mec="black",
                    ls="none",
                    label=f"recommended r={rec['rank']}",
                )
            cost = [(r["rank"], r["trainable_params"]) for r in done if r.get("trainable_params")]
            if cost:
                have_cost = True
                cost_ax.plot(
                    [c[0] for c in cost],
                    [c[1] / 1e6 for c in cost],
                    color=color,
                    ls=":",
                    marker="s",
                    ms=4,
                    alpha=0.7,
                    label=f"params {label}",
                )
        bad = [r for r in lad["rungs"] if r["state"] != "COMPLETE" and r.get("mean") is not None]
        if bad:
            all_ranks.update(r["rank"] for r in bad)
            ax.plot(
                [r["rank"] for r in bad],
                [_mean_of(r) for r in bad],
                marker="x",
                color="grey",
                ls="none",
                ms=8,
                label="pruned/failed",
            )
        if lad.get("base") is not None:
            base = float(lad["base"])
            if base_off_axis(base, [_mean_of(r) for r in done]):
                ax.plot([], [], color=color, ls="--", lw=1.2, label=f"base model ({label}): {base:.4g}, off the axis")
            else:
                ax.axhline(base, color=color, ls="--", lw=1.2, label=f"base model ({label})")
        rec = lad.get("recommendation")
        titles.append(f"r={rec['rank']}" if rec else "no completed rank")

    ax.set_xscale("log", base=2)
    if all_ranks:
        ticks = sorted(all_ranks)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("LoRA rank r (log2 scale)")
    names = sorted(set(objectives))
    direction = ladders[0]["direction"] if ladders else "minimize"
    better = "lower is better" if direction == "minimize" else "higher is better"
    ax.set_ylabel(f"{', '.join(names) or 'objective'} ({better})")
    ax.grid(True, which="major", alpha=0.3)
    if have_cost:
        cost_ax.set_ylabel("trainable parameters (M)")
    else:
        cost_ax.set_yticks([])

    if len(ladders) == 1:
        title = f"Recommended rank: {titles[0]}"
        if ladders[0]["key"]:
            title += f"  ({ladders[0]['key']})"
    elif ladders:
        title = "Recommended rank: " + "; ".join(
            f"{lad['key'] or 'default'} -> {t}" for lad, t in zip(ladders, titles)
        )
    else:
        title = "Recommended rank: no ladders"
    ax.set_title(title, fontsize=10, wrap=True)

    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = cost_ax.get_legend_handles_labels()
    if handles or h2:
        ax.legend(handles + h2, labels + l2, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(target, format="png")
    return target


# --------------------------------------------------------------------------- text table


def _fmt_params(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int((s % 3600) // 60):02d}m"


def _fmt_value(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"


def format_table(ladders: Sequence[Ladder]) -> str:
    """A short plain-text table per ladder plus its recommendation line.

    Columns: rank | alpha | objective mean ± std | share of gain | params | time | state.
    The share of gain is :func:`ranksweep.ladder.gain_shares` over the
    COMPLETE rungs ("-" for the others).
    """
    out: list[str] = []
    header = ("rank", "alpha", "mean ± std", "share", "params", "time", "state")
    for lad in ladders:
        done = _complete(lad["rungs"])
        shares = gain_shares(
            lad["base"],
            [float(r["mean"]) for r in done],
            lad["direction"],
        )
        share_by_rung = {id(r): s for r, s in zip(done, shares)}
        base_txt = f", base {_fmt_value(lad['base'])}" if lad.get("base") is not None else ""
        out.append(f"[{lad['key'] or 'default'}] {lad['objective']} ({lad['direction']}{base_txt})")
        rows: list[tuple[str, ...]] = [header]
        for r in lad["rungs"]:
            mean, std = r.get("mean"), r.get("std")
            obj = "-" if mean is None else f"{_fmt_value(mean)} ± {_fmt_value(std or 0.0)}"
            share = share_by_rung.get(id(r))
            share_txt = "-" if share is None else f"{share * 100:.1f}%"
            state = r["state"] + (f" ({r['fail_reason']})" if r.get("fail_reason") else "")
            rows.append(
                (
                    str(r["rank"]),
                    f"{r['alpha']:g}" if r.get("alpha") is not None else "-",
                    obj,
                    share_txt,
                    _fmt_params(r.get("trainable_params")),
                    _fmt_time(r.get("duration_s")),
                    state,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            cells = [c.rjust(w) for c, w in zip(row[:-1], widths)] + [row[-1]]
            out.append("  " + " | ".join(cells))
        rec = lad.get("recommendation")
        if rec:
            out.append(f"  recommended r={rec['rank']}: {rec['why']}")
        else:
            out.append("  no recommendation: no rank completed")
        if lad.get("stop_reason"):
            out.append(f"  stopped: {lad['stop_reason']}")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n" if out else ""
