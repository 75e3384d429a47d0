"""The report's figures, drawn with matplotlib and returned as inline SVG.

A ladder is drawn by :func:`ranksweep.plot.draw_ladder`, the drawing the sweep's PNG uses: in
detail on each ladder's own figure, as one line per (study, ladder) on the comparison overlay.
The other figures are the report's own: cost against quality, the eval curves during training and
the overlays of each cost against the rank. Every figure is a private ``Figure`` (no pyplot state).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ranksweep.plot import base_off_axis, better, draw_ladder, log2_axis, new_figure, params_formatter
from ranksweep.report.load import StudyData, TrialRow
from ranksweep.sweep.results import Ladder, Rung

__all__ = ["COLORS", "Figures", "Svg", "cost_figure", "curves_figure", "ladder_colors", "ladder_figure",
           "overlay_figures"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22")
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
COSTS = (  # (key of TrialRow.cost, axis label)
    ("duration_s", "wall time (s)"),
    ("peak_mem_gb", "peak memory (GB)"),
    ("trainable_params", "trainable parameters"),
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
    """The objective against log2(rank) for one ladder, in detail (see :func:`ranksweep.plot.draw_ladder`)."""
    fig, (ax,) = new_figure(5.6, 3.5)
    ranks = draw_ladder(ax, lad, color=color, detail=True)
    log2_axis(ax, ranks)
    ax.set_ylabel(f"{lad.objective} ({better(lad.direction)})")
    ax.set_title(f"{data.name}: {lad.label}", fontsize=10)
    if not any(r.values for r in lad.curve) and lad.base is None:
        _no_data(ax, "no finished rank")
    _legend_below(ax)
    return figs.svg(fig, f"{lad.objective} against rank for {data.name} {lad.label}")


def _rank_means(points: Sequence[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """(mean cost, mean objective, rank) per rank, in rank order."""
    by_rank: dict[int, list[tuple[float, float]]] = {}
    for x, y, rank in points:
        by_rank.setdefault(rank, []).append((x, y))
    return [(sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v), rank) for rank, v in sorted(by_rank.items())]


def _cost_axes(ax: Any, rows: Sequence[TrialRow], key: str, color: str, name: str) -> list[float]:
    """One ladder on one cost's axes: a point per seed, a line through each rank's mean; the means drawn."""
    pts = sorted(((c, float(r.value), r.rank, r.state) for r in rows if r.value is not None
                  for c in [r.cost(key)] if c is not None), key=lambda p: (p[2], p[0]))
    if not pts:
        return []
    ok = [p for p in pts if p[3] == "COMPLETE"]
    ax.scatter([p[0] for p in ok], [p[1] for p in ok], color=color, s=16, alpha=0.6, zorder=3)
    means = _rank_means([(p[0], p[1], p[2]) for p in ok])
    ax.plot([m[0] for m in means], [m[1] for m in means], color=color, marker="o", lw=1.4, label=name)
    other = [p for p in pts if p[3] != "COMPLETE"]
    if other:
        ax.plot([p[0] for p in other], [p[1] for p in other], color="grey", marker="x", ls="none")
    for x, y, rank in means:
        ax.annotate(f"r{rank}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5, color=color)
    return [m[1] for m in means] or [p[1] for p in pts]


def cost_figure(figs: Figures, data: StudyData, colors: dict[str, str]) -> Svg:
    """The objective against each cost (wall time, peak memory, trainable parameters, adapter size)."""
    fig, axes = new_figure(10.5, 6.6, ncols=2, nrows=2)
    rungs = [r for r in data.trials if r.role == "rung"]
    base = {r.ladder: r.value for r in data.trials if r.role == "base" and r.value is not None}
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
    rows = [r for r in data.trials if r.role == "rung" and r.intermediate]
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
    ax.set_title(f"{data.name}: eval during training (line width grows with rank)", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return figs.svg(fig, f"eval curves for {data.name}")


# ----------------------------------------------------------------------------- all studies


def _style(si: int, li: int) -> dict[str, str]:
    """The colour, line style and marker of ladder ``li`` of study ``si`` on the overlays."""
    return {"color": COLORS[(si * 3 + li) % len(COLORS)], "ls": LINE_STYLES[si % len(LINE_STYLES)],
            "marker": MARKERS[si % len(MARKERS)]}


def _objective_overlay(ax: Any, studies: Sequence[StudyData], objective: tuple[str, str]) -> list[int]:
    """Every (study, ladder) with this (objective, direction) drawn by :func:`draw_ladder`; the ranks drawn."""
    ranks: list[int] = []
    for si, s in enumerate(studies):
        for li, lad in enumerate(s.ladders):
            if (lad.objective, lad.direction) == objective and lad.complete:
                ranks += draw_ladder(ax, lad, label=f"{s.name} / {lad.label}", detail=False, **_style(si, li))
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
