"""One drawing of a ladder, and the number formats every view of a sweep shares.

:func:`draw_ladder` draws one :class:`~ranksweep.sweep.results.Ladder` on a matplotlib ``Axes``: the
rank curve on a log2 axis with its seed spread, the base model and the recommended rank (one answer per
ladder: the stop rule's), and beside it the nested prescreen's prefix values when the ladder ran one
(:func:`prescreen_curve` computes them once, :func:`draw_prescreen` draws them).
The sweep's PNG (:func:`rank_curve_png`), the HTML report's per-ladder figure and its comparison
overlay all call it; they differ only in the options they pass. matplotlib is used through private
``Figure`` objects (no pyplot state, backend or rcParams touched).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ranksweep.fmt import fmt_params, fmt_pct, fmt_time, fmt_value
from ranksweep.sweep.results import Ladder

__all__ = ["PRESCREEN_LABEL", "PrefixPoint", "PrescreenCurve", "base_off_axis", "draw_ladder", "draw_prescreen",
           "fmt_params", "fmt_pct", "fmt_time", "fmt_value", "log2_axis", "new_figure", "params_formatter",
           "prefix_points", "prescreen_curve", "rank_curve_png"]


def params_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fmt_params(v) if v > 0 else "0")


# --------------------------------------------------------------------------- axes


def new_figure(w: float, h: float, ncols: int = 1, nrows: int = 1, dpi: int = 100) -> tuple[Any, list]:
    """A private matplotlib Figure on the Agg canvas and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]


def log2_axis(ax: Any, ranks: Sequence[int]) -> None:
    """A log2 rank axis with a tick at every rank that ran."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted({int(r) for r in ranks if r and r > 0})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlim(min(ticks) / 1.4, max(ticks) * 1.4)
    ax.set_xlabel("LoRA rank r (log2 scale)")
    ax.grid(True, which="major", alpha=0.3)


def better(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def base_off_axis(base: float, means: Sequence[float]) -> bool:
    """Whether the base value is so far off the curve (e.g. before the task's format is learnt) that a
    line there would flatten it: farther from every rank's mean than 3x their spread. Plots then name
    the base in the legend instead of drawing it."""
    means = [float(m) for m in means]
    span = (max(means) - min(means)) if len(means) > 1 else 0.0
    return bool(means) and span > 0 and min(abs(base - m) for m in means) > 3 * span


# --------------------------------------------------------------------------- the ladder


PRESCREEN_LABEL = "nested prescreen (one run)"


@dataclass(frozen=True)
class PrescreenCurve:
    """A ladder's nested prescreen as every figure draws it (:func:`prescreen_curve`, computed once): each
    prefix's value in rank order, the candidate rank with its prefix value, the ranks trained to confirm it
    and the verdict ("" while they run)."""

    ranks: tuple[int, ...]
    values: tuple[float, ...]
    candidate: Optional[tuple[int, float]]
    confirm: tuple[int, ...]
    verdict: str

    @property
    def candidate_label(self) -> str:
        """The candidate's legend entry: ``prescreen candidate r=4, confirmed``."""
        if self.candidate is None:
            return ""
        state = self.verdict or (f"confirming at r={', '.join(map(str, self.confirm))}" if self.confirm else "running")
        return f"prescreen candidate r={self.candidate[0]}, {state}"


@dataclass(frozen=True)
class PrefixPoint:
    """One prefix of a ladder's nested prescreen beside the same rank trained on its own: the prescreen's
    table in the HTML report and in W&B (:func:`prefix_points`)."""

    rank: int
    prefix: Optional[float]  # the prefix's value (None: not read yet)
    separate: Optional[float]  # the rank trained on its own: its value (None: not trained, or not finished)
    gap: Optional[float]  # prefix - separate, in objective units
    candidate: bool = False
    confirm: bool = False  # trained on its own to confirm the candidate


def prefix_points(lad: Ladder) -> list[PrefixPoint]:
    """Each prefix of ``lad``'s prescreen in rank order (none without one). The gap is the prescreen's
    :attr:`~ranksweep.sweep.results.Prescreen.agreement` where it has one, else the difference."""
    pre = lad.prescreen
    if pre is None:
        return []
    separate = {r.rank: float(r.mean) for r in lad.complete if r.mean is not None}
    gaps = {int(r): float(g) for r, g in ((pre.agreement or {}).get("gap") or {}).items() if g is not None}
    out = []
    for step in sorted(pre.steps, key=lambda st: st.rank):
        v = float(step.value) if step.value is not None and math.isfinite(step.value) else None
        sep = separate.get(step.rank)
        gap = gaps.get(step.rank, v - sep if v is not None and sep is not None else None)
        out.append(PrefixPoint(step.rank, v, sep, gap, candidate=step.rank == pre.candidate,
                               confirm=step.rank in pre.confirm))
    return out


def prescreen_curve(lad: Ladder) -> Optional[PrescreenCurve]:
    """The prefix values of ``lad``'s prescreen (finite ones, ranks >= 1); None without a prescreen or a value."""
    pre = lad.prescreen
    if pre is None:
        return None
    vals = {p.rank: p.prefix for p in prefix_points(lad) if p.rank > 0 and p.prefix is not None}
    if not vals:
        return None
    c = pre.candidate
    return PrescreenCurve(ranks=tuple(vals), values=tuple(vals.values()),
                          candidate=(c, vals[c]) if c is not None and c in vals else None,
                          confirm=tuple(pre.confirm), verdict=str(pre.verdict))


def draw_prescreen(ax: Any, curve: PrescreenCurve, *, color: str = "C0", name: Optional[str] = None) -> list[int]:
    """The prefix values as a dashed line with hollow markers beside the separately trained ranks, the
    candidate ringed by a hollow diamond; ``name`` prefixes the legend entry (several ladders on one axes).
    Return the ranks drawn."""
    ax.plot(list(curve.ranks), list(curve.values), color=color, ls="--", lw=1.3, marker="o", ms=6, mfc="white",
            mec=color, mew=1.4, alpha=0.9, zorder=2,
            label=PRESCREEN_LABEL if name is None else f"{name}: {PRESCREEN_LABEL}")
    if curve.candidate is not None:
        label = curve.candidate_label if name is None else f"{name}: {curve.candidate_label}"
        ax.plot([curve.candidate[0]], [curve.candidate[1]], marker="D", ms=12, mfc="none", mec=color, mew=1.8,
                ls="none", zorder=4, label=label)
    return list(curve.ranks)


def draw_ladder(ax: Any, lad: Ladder, *, color: str = "C0", label: Optional[str] = None, ls: str = "-",
                marker: str = "o", detail: bool = True, cost_ax: Any = None, prescreen: bool = True) -> list[int]:
    """Draw ``lad`` on ``ax``; return the ranks drawn (for :func:`log2_axis`).

    Always: each COMPLETE rank's mean with a seed-std error bar, the base (a line, or named in the
    legend when :func:`base_off_axis`), the recommended rank (a star), pruned/failed ranks with a
    value (grey crosses). With ``detail``: the min-max band over seeds, each seed's value, the margin band
    and a dotted line at the recommendation. With ``cost_ax`` (a twin y axis): the trainable parameters in
    millions. With ``prescreen`` and a ladder that ran one (``hydra.sweeper.prescreen=nested``): its prefix
    values beside the separately trained ranks and its candidate (:func:`draw_prescreen`).
    """
    name = label or lad.label
    done = lad.complete
    xs = [r.rank for r in done]
    ys = [float(r.mean) for r in done]  # type: ignore[arg-type]
    drawn = [r.rank for r in lad.curve]
    pre = prescreen_curve(lad) if prescreen else None
    if pre is not None:
        drawn += draw_prescreen(ax, pre, color=color, name=None if detail else name)
    if done:
        if detail:
            lo, hi = [min(r.values) for r in done], [max(r.values) for r in done]
            if any(h > low for h, low in zip(hi, lo)):
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0, label=f"{name}: min-max over seeds")
            sx = [r.rank for r in done for _ in r.values]
            sy = [float(v) for r in done for v in r.values]
            if len(sy) > len(ys):
                ax.scatter(sx, sy, s=14, color=color, alpha=0.55, zorder=3, label=f"{name}: each seed")
        ax.errorbar(xs, ys, yerr=_yerr(lad, done), color=color, ls=ls, marker=marker, capsize=3, lw=1.8,
                    label=name + (" (95% CI vs the best, paired)" if detail and _paired(done) else ""))
        if detail and lad.margin and lad.recommendation is not None:
            best = next(r for r in done if r.rank == lad.recommendation.best_rank)
            edge = float(best.mean) + (lad.margin if lad.direction == "minimize" else -lad.margin)  # type: ignore[arg-type]
            ax.axhspan(min(best.mean, edge), max(best.mean, edge), color=color, alpha=0.08, lw=0,  # type: ignore[arg-type]
                       label=f"within the margin ({lad.margin:.3g}) of the best")
        by_rank = dict(zip(xs, ys))
        rec = lad.recommendation.rank if lad.recommendation else None
        if rec in by_rank:
            ax.plot([rec], [by_rank[rec]], marker="*", ms=18, color="gold", mec=color, mew=1.5, ls="none",
                    zorder=5, label=f"recommended r={rec}")
            if detail:
                ax.axvline(rec, color="goldenrod", ls=":", lw=1)
        if cost_ax is not None:
            cost = [(r.rank, r.trainable_params) for r in done if r.trainable_params]
            if cost:
                cost_ax.plot([c[0] for c in cost], [c[1] / 1e6 for c in cost], color=color, ls=":", marker="s",
                             ms=4, alpha=0.7, label=f"params {name}")
    bad = [r for r in lad.curve if not r.complete and r.values]
    if bad:
        ax.plot([r.rank for r in bad], [float(r.mean if r.mean is not None else min(r.values)) for r in bad],
                marker="x", color="grey", ls="none", ms=8, mew=2, label="pruned / failed")
    if lad.base is not None:
        if base_off_axis(lad.base, ys + (list(pre.values) if pre is not None else [])):
            ax.plot([], [], color=color, ls="--", lw=1.2, label=f"base ({name}) {lad.base:.4g}, off the axis")
        else:
            ax.axhline(lad.base, color=color, ls="--", lw=1.2 if detail else 0.8, alpha=1.0 if detail else 0.6,
                       label=f"base ({name}) {lad.base:.4g}" if detail else None)
    return drawn


def _paired(done: Sequence[Any]) -> bool:
    return any(r.vs_best is not None and r.vs_best.hi > r.vs_best.lo for r in done)


def _yerr(lad: Ladder, done: Sequence[Any]) -> Any:
    """Error bars: each rank's paired 95% interval against the best rank (the intervals the recommendation
    reads), else the seed standard deviation."""
    if not _paired(done):
        return [float(r.std or 0.0) for r in done]
    lo = [max(float(r.vs_best.est - r.vs_best.lo), 0.0) if r.vs_best else 0.0 for r in done]
    hi = [max(float(r.vs_best.hi - r.vs_best.est), 0.0) if r.vs_best else 0.0 for r in done]
    return [lo, hi]


def rank_curve_png(path_png: str | os.PathLike[str], ladders: Sequence[Ladder]) -> Path:
    """Every ladder's curve (and its nested prescreen's) in one PNG, with the trainable parameters on a second
    axis; return its path."""
    target = Path(path_png)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax,) = new_figure(9, 5.5, dpi=120)
    cost_ax = ax.twinx()
    ranks: list[int] = []
    for i, lad in enumerate(ladders):
        ranks += draw_ladder(ax, lad, color=f"C{i % 10}", detail=len(ladders) == 1, cost_ax=cost_ax)
    log2_axis(ax, ranks)
    names = sorted({lad.objective for lad in ladders})
    ax.set_ylabel(f"{', '.join(names) or 'objective'} ({better(ladders[0].direction if ladders else 'minimize')})")
    if cost_ax.get_legend_handles_labels()[0]:
        cost_ax.set_ylabel("trainable parameters (M)")
    else:
        cost_ax.set_yticks([])
    ax.set_title(rank_title(ladders), fontsize=10, wrap=True)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = cost_ax.get_legend_handles_labels()
    if handles or h2:
        ax.legend(handles + h2, labels + l2, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(target, format="png")
    return target


def rank_title(ladders: Sequence[Ladder]) -> str:
    def rec(lad: Ladder) -> str:
        if lad.recommendation is None:
            return "no completed rank"
        return f"r={lad.recommendation.rank}" + (", bound by the training budget" if lad.budget_bound else "")

    if not ladders:
        return "Recommended rank: no ladders"
    if len(ladders) == 1:
        return f"Recommended rank: {rec(ladders[0])}" + (f"  ({ladders[0].key})" if ladders[0].key else "")
    return "Recommended rank: " + "; ".join(f"{lad.label} -> {rec(lad)}" for lad in ladders)
