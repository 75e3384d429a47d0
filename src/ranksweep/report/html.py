"""The report as one HTML page, from Jinja2 templates shipped with the package.

The templates (``templates/*.html.j2``) are rendered with autoescaping on; the stylesheet and the
scripts (``templates/report.css``, ``errors.js``, ``report.js``) are read from the package and
inlined, and every figure is inline SVG, so the page is one file that works offline. This module
only arranges what the templates show (:class:`StudyView`); numbers are formatted by
:mod:`ranksweep.plot`'s ``fmt_*`` through the ``fmt`` filter.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from ranksweep.errors import RanksweepError
from ranksweep.files import atomic_write_text
from ranksweep.fmt import fmt_params, fmt_pct, fmt_time, fmt_value
from ranksweep.report import figures
from ranksweep.report.load import StudyData, TrialRow, load_study_data
from ranksweep.storage import DEFAULT_STORAGE_URL
from ranksweep.sweep.ladder import Recommendation
from ranksweep.sweep.results import Ladder

__all__ = ["FORMATS", "Link", "StudyView", "default_report_path", "render_report", "study_view", "write_report"]

TEMPLATES = "templates"
FORMATS: dict[str, Callable[[float], str]] = {
    "value": fmt_value,  # an objective
    "params": fmt_params,
    "time": fmt_time,
    "pct": fmt_pct,
    "ratio": lambda v: f"{v:.3f}",  # exact match, a share in [0, 1]
    "alpha": lambda v: f"{v:g}",
    "gb": lambda v: f"{v:.3f}",
    "mb": lambda v: f"{v:.3f}",
    "rate": lambda v: f"{v:.0f}",  # tokens per second
}


@dataclass(frozen=True)
class Link:
    """A file:// link to a local path; shown greyed out, not linked, once the path is gone."""

    text: str
    title: str
    href: Optional[str] = None

    @property
    def exists(self) -> bool:
        return self.href is not None

    @classmethod
    def to(cls, path: Optional[Path], text: str) -> Optional[Link]:
        if path is None:
            return None
        return cls(text, str(path), path.resolve().as_uri() if path.exists() else None)


@dataclass(frozen=True)
class LadderView:
    """One ladder's row of the overview and line of "why each ladder stopped"."""

    ladder: Ladder
    best: Optional[float]  # the best mean of a COMPLETE rank
    trials: int  # the study's trials of this ladder, any state

    @property
    def rec(self) -> Optional[Recommendation]:
        return self.ladder.recommendation


@dataclass
class StudyView:
    """What the templates show of one study, beyond :class:`StudyData` itself."""

    data: StudyData
    ladders: list[LadderView]
    counts: str  # "4 complete, 1 fail"
    recommended: set[tuple[str, int]]  # (ladder, rank) of each recommendation
    trial_header: list[str]
    failures: list[tuple[TrialRow, str]]  # every trial that did not complete, with why
    output_links: dict[int, Optional[Link]]
    wandb_links: dict[int, Optional[Link]]
    summary_runs: list[Link]
    ladder_figs: list[figures.Svg] = field(default_factory=list)
    cost_fig: Optional[figures.Svg] = None
    curves_fig: Optional[figures.Svg] = None


def _best(lad: Ladder) -> Optional[float]:
    means = [float(r.mean) for r in lad.complete if r.mean is not None]
    if not means:
        return None
    return min(means) if lad.direction == "minimize" else max(means)


def ladder_views(data: StudyData) -> list[LadderView]:
    return [LadderView(lad, _best(lad), len(data.ladder_rows(lad.key))) for lad in data.ladders]


def failure_reason(r: TrialRow) -> str:
    """Why a trial did not complete, in words."""
    if r.state == "PRUNED":
        if r.trial.fail_reason:
            return str(r.trial.fail_reason)
        if r.value is None:
            return "pruned"
        parent = r.attrs.get("parent_trial_number")
        return (f"behind its parent rank{f' (trial {parent})' if parent is not None else ''} late in training; "
                f"last eval {fmt_value(r.value)}")
    if r.state == "FAIL":
        return str(r.trial.fail_reason or "no reason recorded (worker killed? heartbeat went stale)")
    return "not finished (running, or its worker died)"


def _trial_header(data: StudyData) -> list[str]:
    kind = next((r.metrics.get("peak_mem_kind") for r in data.trials if r.metrics.get("peak_mem_kind")), None)
    return ["#", "ladder", "rank", "seed", "role", "state", data.objective, "exact match", "alpha",
            "trainable params", "time", f"peak mem (GB{', ' + str(kind) if kind else ''})", "tok/s", "adapter MB",
            "output dir", "W&B run"]


def _counts(data: StudyData) -> str:
    counts: dict[str, int] = {}
    for r in data.trials:
        counts[r.state] = counts.get(r.state, 0) + 1
    return ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))


def _summary_run_links(data: StudyData) -> list[Link]:
    out = []
    for d in data.sweep_dirs:
        for run in data.summary_runs:
            if run.parent.parent == d:
                out.append(Link.to(run, f"{d.name}/wandb/{run.name}"))
    return [link for link in out if link is not None]


def study_view(data: StudyData) -> StudyView:
    """Everything of ``data`` the study section shows, but its figures."""
    rows = data.trials
    return StudyView(
        data=data, ladders=ladder_views(data), counts=_counts(data),
        recommended={(lad.key, lad.recommendation.rank) for lad in data.ladders if lad.recommendation},
        trial_header=_trial_header(data),
        failures=[(r, failure_reason(r)) for r in rows if r.state != "COMPLETE"],
        output_links={r.number: Link.to(r.output_dir, r.output_dir.name if r.output_dir else "-") for r in rows},
        wandb_links={r.number: Link.to(r.wandb_dir, r.wandb_dir.name) if r.wandb_dir else
                     (Link(r.wandb_run, r.wandb_run) if r.wandb_run else None) for r in rows},
        summary_runs=_summary_run_links(data))


def _draw_study(figs: figures.Figures, view: StudyView, index: int) -> StudyView:
    colors = figures.ladder_colors(view.data, index)
    view.ladder_figs = [figures.ladder_figure(figs, view.data, lad, colors.get(lad.key, figures.COLORS[0]))
                        for lad in view.data.ladders]
    view.cost_fig = figures.cost_figure(figs, view.data, colors)
    view.curves_fig = figures.curves_figure(figs, view.data, colors)
    return view


# ----------------------------------------------------------------------------- rendering


def _asset(name: str) -> str:
    return (resources.files("ranksweep.report") / TEMPLATES / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ranksweep.report", TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = lambda v, kind="value": FORMATS[kind](float(v))
    return env


def render_report(studies: Sequence[StudyData], generated: Optional[str] = None) -> str:
    """The report of ``studies`` as one HTML document (no external resources)."""
    import matplotlib
    from markupsafe import Markup

    figs = figures.Figures()
    with matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10}):
        overlays = figures.overlay_figures(figs, studies) if sum(len(s.ladders) for s in studies) > 1 else []
        views = [_draw_study(figs, study_view(s), i) for i, s in enumerate(studies)]
    return _environment().get_template("report.html.j2").render(
        title="ranksweep report: " + " vs ".join(s.name for s in studies),
        generated=generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        studies=views, overlays=overlays,
        css=Markup(_asset("report.css")), js_errors=Markup(_asset("errors.js")), js_main=Markup(_asset("report.js")))


def default_report_path(study_names: Sequence[str], root: str | os.PathLike[str] = "outputs") -> Path:
    """``outputs/reports/<study1>[_vs_<study2>...].html`` (unsafe characters replaced)."""
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in n) for n in study_names]
    return Path(root) / "reports" / ("_vs_".join(safe) + ".html")


def write_report(study_names: Sequence[str], storage_url: str = DEFAULT_STORAGE_URL,
                 out: Optional[str | os.PathLike[str]] = None) -> Path:
    """Load the studies, render the report and write it (atomically); return its path."""
    if not study_names:
        raise RanksweepError("report: name at least one study")
    dup = sorted({n for n in study_names if list(study_names).count(n) > 1})
    if dup:
        raise RanksweepError(f"report: study named twice: {', '.join(dup)}")
    studies = [load_study_data(n, storage_url) for n in study_names]
    target = Path(out) if out else default_report_path(study_names)
    if target.is_dir():
        target = target / default_report_path(study_names).name
    return atomic_write_text(target, render_report(studies))
