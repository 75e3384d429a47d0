"""The report's figures, drawn with matplotlib and returned as inline SVG.

A ladder is drawn by :func:`ranksweep.plot.draw_ladder`, the drawing the sweep's PNG uses: in
detail on each ladder's own figure (each rank's paired interval against the best, the margin band),
as one line per (study, ladder) on the comparison overlay. The other figures are the report's own:
each doubling's gain with its interval against the margin, each rank's search trials against the
learning rate, cost against quality, the eval curves during training and the overlays of each cost
against the rank. Every figure is a private ``Figure`` (no pyplot state).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from optuna.trial import TrialState

from ranksweep.plot import (
    base_off_axis,
    better,
    draw_ladder,
    log2_axis,
    new_figure,
    params_formatter,
    prescreen_curve,
)
from ranksweep.report.load import StudyData, TrialRow
from ranksweep.sweep import keys
from ranksweep.sweep.results import Ladder, Rung
from ranksweep.sweep.rules import Doubling

__all__ = ["COLORS", "Figures", "Svg", "chosen_trials", "cost_figure", "curves_figure", "gain_figure",
           "ladder_colors", "ladder_figure", "overlay_figures", "search_figure", "value_rows"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22")
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
COSTS = (  # (key of TrialRow.cost, axis label)
    (keys.DURATION_S, "wall time (s)"),
    (keys.PEAK_MEM_GB, "peak memory (GB)"),
    (keys.TRAINABLE_PARAMS, "trainable parameters"),
    ("adapter_mb", "adapter size (MB)"),
)


@dataclass(frozen=True)
class Svg:
    """One figure: its SVG markup (matplotlib's, from ``<svg``) and a text label for screen readers."""

    label: str
    markup: str


class Figures:
    """Figures to SVG, with ids unique across the page and the same from one run to the next."""

    def __init__(self) -> None:
        self.count = 0

    def svg(self, fig: Any, label: str) -> Svg:
        import matplotlib

        self.count += 1
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"ranksweep-fig-{self.count}"}):
            fig.savefig(buf, format="svg", bbox_inches="tight",
                        metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        text = buf.getvalue()
        return Svg(label=label, markup=text[text.index("<svg"):])


def ladder_colors(data: StudyData, index: int) -> dict[str, str]:
    """A colour per ladder of the ``index``-th study (the overlays use the same ones)."""
    colors = {lad.key: COLORS[(index * 3 + i) % len(COLORS)] for i, lad in enumerate(data.ladders)}
    for r in data.trials:
        colors.setdefault(r.ladder, COLORS[len(colors) % len(COLORS)])
    return colors


def _legend_below(ax: Any) -> None:
    """The legend under the axes, each label once."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=min(3, len(seen)), frameon=False)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")


# ----------------------------------------------------------------------------- one study


def ladder_figure(figs: Figures, data: StudyData, lad: Ladder, color: str) -> Svg:
    """The objective against log2(rank) for one ladder, in detail, with its nested prescreen's prefix values
    beside the separately trained ranks when it ran one (see :func:`ranksweep.plot.draw_ladder`)."""
    fig, (ax,) = new_figure(5.6, 3.5)
    ranks = draw_ladder(ax, lad, color=color, detail=True)
    log2_axis(ax, ranks)
    ax.set_ylabel(f"{lad.objective} ({better(lad.direction)})")
    ax.set_title(f"{data.name}: {lad.label}", fontsize=10)
    if not any(r.values for r in lad.curve) and lad.base is None and prescreen_curve(lad) is None:
        _no_data(ax, "no finished rank")
    _legend_below(ax)
    return figs.svg(fig, f"{lad.objective} against rank for {data.name} {lad.label}")


MARGIN = "#b42318"
# Each verdict's colour, fill and legend label (Doubling.verdict); the ladder table colours its cells alike.
VERDICTS = {
    "above": ("#11703a", True, "lower bound above the margin: worth it"),
    "leaning": ("#1f5fa8", False, "only the estimate above the margin: not confirmed, ends no ladder"),
    "below": ("#9a6700", False, "estimate within the margin: no gain worth it"),
}


def gain_figure(figs: Figures, data: StudyData, lad: Ladder, doublings: Sequence[Doubling]) -> Optional[Svg]:
    """Each doubling's gain with its interval (error bars) against the margin line; None without any gain.

    A doubling whose lower bound is above the margin is confidently worth it (filled, green); one whose
    estimate only is above it leans towards a gain (hollow, blue); the others are hollow, amber. The margin is
    the one the stop rule judged each doubling with (relative margins move a little with the value)."""
    ds = [d for d in doublings if d.verdict is not None]
    if not ds:
        return None
    fig, (ax,) = new_figure(4.6, 3.5)
    pct = round(lad.comparison.confidence * 100) if lad.comparison is not None else 95
    for verdict, (color, filled, label) in VERDICTS.items():
        pick = [d for d in ds if d.verdict == verdict]
        if not pick:
            continue
        est = [d.gain.est for d in pick]  # type: ignore[union-attr]
        err = [[max(d.gain.est - d.gain.lo, 0.0) for d in pick], [max(d.gain.hi - d.gain.est, 0.0) for d in pick]]  # type: ignore[union-attr]
        ax.errorbar([d.rank for d in pick], est, yerr=err, ls="none", marker="o", ms=7, capsize=4, lw=1.6,
                    color=color, mfc=color if filled else "white", mew=1.6, zorder=3, label=label)
    margins = [(d.rank, d.margin) for d in ds if d.margin is not None]
    if margins:
        ax.plot([m[0] for m in margins], [m[1] for m in margins], color=MARGIN, ls="--", lw=1.2,
                marker="_", ms=14, label="margin")
    ax.axhline(0.0, color="black", lw=0.8, alpha=0.6)
    log2_axis(ax, [d.rank for d in ds])
    ax.set_xticklabels([f"{d.prev}\u2192{d.rank}" for d in sorted(ds, key=lambda d: d.rank)])
    ax.set_xlabel("doubling r \u2192 2r")
    ax.set_ylabel(f"gain in {lad.objective} (positive: better)")
    ax.set_title(f"{lad.label}: gain per doubling ({pct}% CI)", fontsize=10)
    _legend_below(ax)
    return figs.svg(fig, f"gain per doubling with {pct}% intervals against the margin for {data.name} {lad.label}")


def chosen_trials(rung: Rung) -> list[int]:
    """The trials behind a rung's value: its best search trial and the further seeds of its values."""
    best = rung.best
    if best is None:
        return []
    return [best.number] + [j.trial.number for j in rung.jobs if not j.search and j.trial is not None
                            and j.trial.objective is not None]


def value_rows(data: StudyData) -> list[TrialRow]:
    """The trials behind the rank values: every further-seed trial (role ``rung``; every trial of a sweep
    without a search) and each rank's best search trial. A search's other trials are on the search figure."""
    chosen = {n for lad in data.ladders for rung in lad.curve for n in chosen_trials(rung)}
    return [r for r in data.trials if r.role == "rung" or r.number in chosen]


def _searched(data: StudyData, lad: Ladder) -> list[tuple[Rung, list[TrialRow]]]:
    """Each rank's search trials that trained at a known learning rate, for ranks that searched it."""
    out = []
    for rung in lad.curve:
        rows = [r for r in data.rank_rows(lad.key, rung.rank) if r.role == "search"
                and "trainer.lr" in (r.attrs.get(keys.SEARCHED) or []) and r.trial.lr and r.last_value is not None]
        if rows:
            out.append((rung, rows))
    return out


def _rank_color(rank: int, ranks: Sequence[int]) -> Any:
    from matplotlib import colormaps

    lo, hi = math.log2(min(ranks)), math.log2(max(ranks))
    return colormaps["viridis"](0.85 * (math.log2(rank) - lo) / max(hi - lo, 1e-9))


def search_figure(figs: Figures, data: StudyData, lad: Ladder) -> Optional[Svg]:
    """Each rank's search trials: the objective against the learning rate on a log axis, one colour per
    rank, each rank's best starred and the bests joined in rank order. Pruned trials are drawn hollow at
    their last eval (an eval loss: drawn only when the objective is eval_loss); those far off the finished
    values sit on the axis' edge as triangles. None when no rank searched the learning rate."""
    per_rank = _searched(data, lad)
    if not per_rank:
        return None
    fig, (ax,) = new_figure(5.6, 3.7)
    ranks = [rung.rank for rung, _ in per_rank]
    losses = lad.objective == "eval_loss"
    done_y = [float(r.last_value) for _, rows in per_rank for r in rows  # type: ignore[arg-type]
              if r.state == TrialState.COMPLETE]
    limits = _y_limits(done_y)
    bests: list[tuple[float, float]] = []
    off = False
    for rung, rows in per_rank:
        color = _rank_color(rung.rank, ranks)
        done = [r for r in rows if r.state == TrialState.COMPLETE]
        ax.scatter([r.trial.lr for r in done], [r.last_value for r in done], s=26, color=color, zorder=3,
                   label=f"r={rung.rank}")
        if losses:
            off = _pruned_points(ax, [r for r in rows if r.state != TrialState.COMPLETE], color, limits) or off
        best = rung.best
        if best is not None and best.lr and best.objective is not None:
            bests.append((best.lr, best.objective))
            ax.scatter([best.lr], [best.objective], s=170, marker="*", color=color, edgecolors="black", lw=0.8,
                       zorder=4)
            ax.annotate(f"r{rung.rank}", (best.lr, best.objective), textcoords="offset points", xytext=(6, -10),
                        fontsize=7.5, color="black")
    if len(bests) > 1:
        ax.plot([b[0] for b in bests], [b[1] for b in bests], color="black", ls=":", lw=1, zorder=2,
                label="best of each rank")
    _search_range(ax, per_rank)
    if losses:
        ax.scatter([], [], s=26, facecolors="none", edgecolors="grey", label="pruned (last eval)")
    if off:
        ax.scatter([], [], s=30, marker="^", facecolors="none", edgecolors="grey", label="pruned, last eval above")
    ax.scatter([], [], s=120, marker="*", color="white", edgecolors="black", label="best of the rank")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"{lad.objective} ({better(lad.direction)})")
    ax.set_title(f"{lad.label}: each rank's search trials", fontsize=10, pad=12)
    ax.grid(True, which="major", alpha=0.3)
    _legend_below(ax)
    return figs.svg(fig, f"search trials against the learning rate per rank for {data.name} {lad.label}")


def _y_limits(done: Sequence[float]) -> Optional[tuple[float, float]]:
    """The finished trials' values with some room; pruned evals beyond it are drawn on its edge."""
    if not done:
        return None
    lo, hi = min(done), max(done)
    pad = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    return lo - 0.12 * pad, hi + 0.6 * pad


def _pruned_points(ax: Any, rows: Sequence[TrialRow], color: Any, limits: Optional[tuple[float, float]]) -> bool:
    """Pruned trials, hollow, at their last eval; above ``limits``: a hollow triangle on the top edge.
    Whether any was above."""
    top = limits[1] if limits is not None else math.inf
    inside = [r for r in rows if float(r.last_value) <= top]  # type: ignore[arg-type]
    off = [r for r in rows if float(r.last_value) > top]  # type: ignore[arg-type]
    if inside:
        ax.scatter([r.trial.lr for r in inside], [r.last_value for r in inside], s=26, facecolors="none",
                   edgecolors=[color], lw=1.2, zorder=3)
    if off:
        ax.scatter([r.trial.lr for r in off], [top] * len(off), s=30, marker="^", facecolors="none",
                   edgecolors=[color], lw=1.2, zorder=3, clip_on=False)
    return bool(off)


def _search_range(ax: Any, per_rank: Sequence[tuple[Rung, list[TrialRow]]]) -> None:
    """The learning rate's search range: dotted lines at its edges."""
    ranges = {r.trial.ranges["trainer.lr"] for _, rows in per_rank for r in rows if "trainer.lr" in r.trial.ranges}
    if len(ranges) == 1:
        (lo, hi), = ranges
        for x in (lo, hi):
            ax.axvline(x, color="grey", ls=(0, (2, 2)), lw=1)
        ax.plot([], [], color="grey", ls=(0, (2, 2)), lw=1, label="search range")


def _rank_means(points: Sequence[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """(mean cost, mean objective, rank) per rank, in rank order."""
    by_rank: dict[int, list[tuple[float, float]]] = {}
    for x, y, rank in points:
        by_rank.setdefault(rank, []).append((x, y))
    return [(sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v), rank) for rank, v in sorted(by_rank.items())]


def _cost_axes(ax: Any, rows: Sequence[TrialRow], key: str, color: str, name: str) -> list[float]:
    """One ladder on one cost's axes: a point per seed, a line through each rank's mean; the means drawn."""
    pts = sorted(((c, float(r.last_value), r.rank, r.state) for r in rows if r.last_value is not None
                  for c in [r.cost(key)] if c is not None), key=lambda p: (p[2], p[0]))
    if not pts:
        return []
    ok = [p for p in pts if p[3] == TrialState.COMPLETE]
    ax.scatter([p[0] for p in ok], [p[1] for p in ok], color=color, s=16, alpha=0.6, zorder=3)
    means = _rank_means([(p[0], p[1], p[2]) for p in ok])
    ax.plot([m[0] for m in means], [m[1] for m in means], color=color, marker="o", lw=1.4, label=name)
    other = [p for p in pts if p[3] != TrialState.COMPLETE]
    if other:
        ax.plot([p[0] for p in other], [p[1] for p in other], color="grey", marker="x", ls="none")
    for x, y, rank in means:
        ax.annotate(f"r{rank}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5, color=color)
    return [m[1] for m in means] or [p[1] for p in pts]


def cost_figure(figs: Figures, data: StudyData, colors: dict[str, str]) -> Svg:
    """The objective against each cost (wall time, peak memory, trainable parameters, adapter size)."""
    fig, axes = new_figure(10.5, 6.6, ncols=2, nrows=2)
    rungs = value_rows(data)
    base = {r.ladder: r.last_value for r in data.trials if r.role == "base" and r.last_value is not None}
    for ax, (key, label) in zip(axes, COSTS):
        drawn = False
        for ladder, color in colors.items():
            ys = _cost_axes(ax, [r for r in rungs if r.ladder == ladder], key, color, ladder)
            drawn = drawn or bool(ys)
            if ys and base.get(ladder) is not None and not base_off_axis(base[ladder], ys):
                ax.axhline(base[ladder], color=color, ls="--", lw=0.9, alpha=0.7)
        if key == "trainable_params":
            ax.xaxis.set_major_formatter(params_formatter())
        ax.set_xlabel(label)
        ax.set_ylabel(data.objective)
        ax.grid(True, alpha=0.3)
        if not drawn:
            _no_data(ax, f"no {label} recorded")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7.5, loc="best")
    fig.suptitle(f"{data.name}: cost against quality ({data.objective}, {better(data.direction)}; "
                 "dashed: base, unless far off the curve)", fontsize=10)
    fig.tight_layout()
    return figs.svg(fig, f"cost against quality for {data.name}")


def curves_figure(figs: Figures, data: StudyData, colors: dict[str, str]) -> Optional[Svg]:
    """Eval values during training (Optuna's intermediate values), one line per rung trial; None without any."""
    rows = [r for r in value_rows(data) if r.intermediate]
    if not rows:
        return None
    fig, (ax,) = new_figure(5.6, 3.5)
    for r in rows:
        steps = sorted(r.intermediate)
        color = colors.get(r.ladder, "grey")
        ax.plot(steps, [r.intermediate[s] for s in steps], color=color, ls=LINE_STYLES[r.seed % len(LINE_STYLES)],
                marker=".", lw=1.0 + 0.25 * math.log2(max(r.rank, 1)), alpha=0.8, label=r.ladder)
        ax.annotate(f"r{r.rank}", (steps[-1], r.intermediate[steps[-1]]), textcoords="offset points",
                    xytext=(3, 0), fontsize=7, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel(f"eval {data.objective}")
    searched = any(r.role == "search" for r in data.trials)
    ax.set_title(f"{data.name}: eval during training{' of each rank’s best trial' if searched else ''} "
                 "(line width grows with rank)", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return figs.svg(fig, f"eval curves for {data.name}")


# ----------------------------------------------------------------------------- all studies


def _style(si: int, li: int) -> dict[str, str]:
    """The colour, line style and marker of ladder ``li`` of study ``si`` on the overlays."""
    return {"color": COLORS[(si * 3 + li) % len(COLORS)], "ls": LINE_STYLES[si % len(LINE_STYLES)],
            "marker": MARKERS[si % len(MARKERS)]}


def _objective_overlay(ax: Any, studies: Sequence[StudyData], objective: tuple[str, str]) -> list[int]:
    """Every (study, ladder) with this (objective, direction) drawn by :func:`draw_ladder`; the ranks drawn.
    The prescreens are left to each ladder's own figure: here a dashed line is another study's ladder."""
    ranks: list[int] = []
    for si, s in enumerate(studies):
        for li, lad in enumerate(s.ladders):
            if (lad.objective, lad.direction) == objective and lad.complete:
                ranks += draw_ladder(ax, lad, label=f"{s.name} / {lad.label}", detail=False, prescreen=False,
                                     **_style(si, li))
    return ranks


def _rung_cost(s: StudyData, rung: Rung, key: str) -> Optional[float]:
    """A rank's cost: its time summed over seeds, else the largest over its trials."""
    if key == "duration_s":
        return rung.duration_s or None
    if key == "peak_mem_gb":
        return rung.peak_mem_gb or None
    if key == "trainable_params":
        return float(rung.trainable_params) if rung.trainable_params else None
    sizes = [r.cost(key) for r in s.trials if r.number in rung.trial_numbers]
    sizes = [v for v in sizes if v is not None]
    return max(sizes) if sizes else None


def _cost_overlay(ax: Any, studies: Sequence[StudyData], key: str) -> list[int]:
    """One cost against the rank, a line per (study, ladder) over the ranks its curve shows."""
    ranks: list[int] = []
    for si, s in enumerate(studies):
        for li, lad in enumerate(s.ladders):
            pts = [(r.rank, c) for r in lad.curve for c in [_rung_cost(s, r, key)] if c is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.8, label=f"{s.name} / {lad.label}",
                        **_style(si, li))
                ranks += [p[0] for p in pts]
    return ranks


def _overlay(figs: Figures, label: str, title: str, draw: Callable[[Any], list[int]],
             params_axis: bool = False) -> Optional[Svg]:
    fig, (ax,) = new_figure(5.6, 3.5)
    ranks = draw(ax)
    if not ranks:
        return None
    if params_axis:
        ax.yaxis.set_major_formatter(params_formatter())
    log2_axis(ax, ranks)
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9.5)
    _legend_below(ax)
    return figs.svg(fig, f"{label} against rank, all studies")


def overlay_figures(figs: Figures, studies: Sequence[StudyData]) -> list[Svg]:
    """One chart per objective and per cost with every (study, ladder) as a line, against log2(rank)."""
    out: list[Optional[Svg]] = []
    for obj in sorted({(lad.objective, lad.direction) for s in studies for lad in s.ladders}):
        label = f"{obj[0]} ({better(obj[1])})"
        out.append(_overlay(figs, label, "objective against rank, all studies (star: recommended; thin lines: base)",
                            lambda ax, obj=obj: _objective_overlay(ax, studies, obj)))
    for key, label in COSTS:
        label = "wall time (s, summed over seeds)" if key == "duration_s" else label
        out.append(_overlay(figs, label, f"{label} against rank, all studies",
                            lambda ax, key=key: _cost_overlay(ax, studies, key), key == "trainable_params"))
    return [f for f in out if f is not None]
