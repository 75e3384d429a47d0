"""The report as one HTML page, from Jinja2 templates shipped with the package.

The templates (``templates/*.html.j2``) are rendered with autoescaping on; the stylesheet and the
scripts (``templates/report.css``, ``errors.js``, ``report.js``) are read from the package and
inlined, and every figure is inline SVG, so the page is one file that works offline. This module
only arranges what the templates show (:class:`StudyView`, :class:`LadderView`, :class:`RungRow`);
numbers are formatted by :mod:`ranksweep.fmt`'s ``fmt_*`` through the ``fmt`` filter.
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

from optuna.trial import TrialState

from ranksweep.errors import RanksweepError
from ranksweep.files import atomic_write_text
from ranksweep.fmt import fmt_params, fmt_pct, fmt_time, fmt_value
from ranksweep.plot import PrefixPoint, prefix_points
from ranksweep.report import figures
from ranksweep.report.load import StudyData, TrialRow, load_study_data, trial_steps
from ranksweep.sweep import keys
from ranksweep.sweep.results import Ladder, Rung
from ranksweep.sweep.rules import Doubling, Recommendation
from ranksweep.sweep.settings import DEFAULT_STORAGE_URL

__all__ = ["FORMATS", "LadderView", "Link", "PrefixRow", "RungRow", "StudyView", "default_report_path",
           "prefix_rows", "render_report", "study_view", "write_report"]

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
    "lr": lambda v: f"{v:.2e}",  # a learning rate
    "int": lambda v: f"{v:.0f}",  # steps, counts
    "g3": lambda v: f"{v:.3g}",  # an effective rank, a margin
    "signed": lambda v: f"{v + 0.0:+.3g}",  # a gain, a difference
}


def param_text(v: Any) -> str:
    """A searched value as the table shows it: numbers to 3 significant digits, anything else as is."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


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
class RungRow:
    """One rank's row of its ladder's evidence table: the :class:`Rung` and what its trials cost."""

    rung: Rung
    trials: int  # trials that trained this rank: search slots, further seeds, retries
    pruned: dict[str, int]  # pruned trials by rule: rung (successive halving), parent, cancelled, other
    failed: int
    steps: int  # optimizer steps over all of them
    doubling: Optional[Doubling]  # the stop rule's judgement of the doubling to this rank
    within_margin: Optional[bool]  # its upper bound on (its value - the best) within the margin
    recommended: bool = False
    best: bool = False

    @property
    def lrs_tried(self) -> int:
        return len(set(self.rung.lrs))

    @property
    def pruned_text(self) -> str:
        """``rung 2, parent 1``: the pruned trials by rule, or ``""``."""
        return ", ".join(f"{k} {v}" for k, v in self.pruned.items())


@dataclass(frozen=True)
class PrefixRow:
    """One row of a ladder's prescreen table: the prefix beside the same rank trained on its own
    (:class:`ranksweep.plot.PrefixPoint`), and the stop rule's verdict on the doubling to it on each curve."""

    point: PrefixPoint
    prefix_verdict: Optional[str]  # above | leaning | below, on the prefix curve
    separate_verdict: Optional[str]  # the same doubling on the separately trained ranks

    rank = property(lambda self: self.point.rank)
    prefix = property(lambda self: self.point.prefix)
    separate = property(lambda self: self.point.separate)
    gap = property(lambda self: self.point.gap)
    candidate = property(lambda self: self.point.candidate)
    confirm = property(lambda self: self.point.confirm)


def prefix_rows(lad: Ladder) -> list[PrefixRow]:
    """The prescreen's table: a row per prefix (:func:`ranksweep.plot.prefix_points`); none without one."""
    if lad.prescreen is None:
        return []
    judged = {d.rank: d.verdict for d in lad.comparison.doublings} if lad.comparison is not None else {}
    on_prefixes = {d.rank: d.verdict for d in lad.prescreen.doublings}
    return [PrefixRow(p, on_prefixes.get(p.rank), judged.get(p.rank)) for p in prefix_points(lad)]


@dataclass
class LadderView:
    """One ladder: its row of the overview, its evidence table, its prescreen's table and its figures."""

    ladder: Ladder
    best: Optional[float]  # the best mean of a COMPLETE rank
    trials: int  # the study's trials of this ladder, any state
    rows: list[RungRow] = field(default_factory=list)
    prefixes: list[PrefixRow] = field(default_factory=list)  # hydra.sweeper.prescreen=nested: each prefix
    cost: dict[str, Any] = field(default_factory=dict)  # Ladder.cost
    curve_fig: Optional[figures.Svg] = None
    gain_fig: Optional[figures.Svg] = None
    search_fig: Optional[figures.Svg] = None

    @property
    def rec(self) -> Optional[Recommendation]:
        return self.ladder.recommendation

    @property
    def edges(self) -> list[RungRow]:
        """Ranks whose best learning rate sits at the edge of the search range."""
        return [r for r in self.rows if r.rung.lr_at_edge]

    @property
    def searched(self) -> bool:
        """Whether any rank searched its values (the table then has a column for them)."""
        return any(r.rung.best_params for r in self.rows)

    @property
    def figs(self) -> list[figures.Svg]:
        return [f for f in (self.curve_fig, self.gain_fig, self.search_fig) if f is not None]


@dataclass
class StudyView:
    """What the templates show of one study, beyond :class:`StudyData` itself."""

    data: StudyData
    ladders: list[LadderView]
    counts: str  # "4 complete, 1 fail"
    recommended: set[int]  # the trials behind each recommended rank's value
    chosen: set[int]  # the trials behind every rank's value (a search's best, further seeds)
    settings: list[tuple[str, str]]  # the stop rule's and the search's settings, as the note lists them
    trial_header: list[str]
    failures: list[tuple[TrialRow, str]]  # every trial that did not complete, with why
    output_links: dict[int, Optional[Link]]
    wandb_links: dict[int, Optional[Link]]
    summary_runs: list[Link]
    cost_fig: Optional[figures.Svg] = None
    curves_fig: Optional[figures.Svg] = None


def _best(lad: Ladder) -> Optional[float]:
    means = [float(r.mean) for r in lad.complete if r.mean is not None]
    if not means:
        return None
    return min(means) if lad.direction == "minimize" else max(means)


def _within(lad: Ladder, r: Rung) -> Optional[bool]:
    """Whether r's upper bound on how much worse than the best it is lies within the margin."""
    if r.vs_best is None or lad.margin is None:
        return None
    worse = r.vs_best.hi if lad.direction == "minimize" else -r.vs_best.lo
    return worse <= lad.margin


def rung_rows(data: StudyData, lad: Ladder) -> list[RungRow]:
    """The evidence table of one ladder: a row per rank of its curve."""
    judged = {d.rank: d for d in lad.comparison.doublings} if lad.comparison is not None else {}
    rec = lad.recommendation
    out = []
    for rung in lad.curve:
        rows = data.rank_rows(lad.key, rung.rank)
        pruned: dict[str, int] = {}
        for r in rows:
            if r.state == TrialState.PRUNED:
                who = str(r.trial.pruned_by or "other")
                pruned[who] = pruned.get(who, 0) + 1
        out.append(RungRow(rung=rung, trials=len(rows), pruned=dict(sorted(pruned.items())),
                           failed=sum(r.state == TrialState.FAIL for r in rows),
                           steps=sum(trial_steps(r) or 0 for r in rows), doubling=judged.get(rung.rank),
                           within_margin=_within(lad, rung), recommended=rec is not None and rec.rank == rung.rank,
                           best=rec is not None and rec.best_rank == rung.rank))
    return out


def ladder_views(data: StudyData) -> list[LadderView]:
    return [LadderView(lad, _best(lad), len(data.ladder_rows(lad.key)), rung_rows(data, lad), prefix_rows(lad),
                       lad.cost) for lad in data.ladders]


def settings_rows(data: StudyData) -> list[tuple[str, str]]:
    """The settings the "how to read this" note lists: the stop rule's, then the search's."""
    spec, space = data.spec, data.space
    out: list[tuple[str, str]] = []
    if spec is not None:
        out += spec.rule.describe(data.objective)
        out.append(("seeds per rank", str(spec.seeds)))
    search = dict(space.get("search") or {})
    if search:
        out.append(("search space", "; ".join(f"{k}: {v}" for k, v in search.items())))
        out.append(("search budget", f"{space.get('search_budget', spec.budget if spec else '-')} trials per rank"))
    else:
        out.append(("search", "none: one trial per rank and seed at the configured values"))
    return out


def failure_reason(r: TrialRow) -> str:
    """Why a trial did not complete, in words."""
    if r.state == TrialState.PRUNED:
        if r.trial.fail_reason:
            return str(r.trial.fail_reason)
        who = r.trial.pruned_by
        last = f"; last eval {fmt_value(r.last_value)}" if r.last_value is not None else ""
        if who == "rung":
            steps = trial_steps(r)
            return (f"stopped by successive halving within r={r.rank}'s search"
                    f"{f' at step {steps}' if steps is not None else ''}: behind the rank's better values{last}")
        if who == "cancelled":
            return f"cancelled: {r.trial.cancel_reason or 'the ladder stopped below this rank'}{last}"
        if r.last_value is None:
            return "pruned"
        parent = r.trial.parent_trial_number
        return (f"behind its parent rank{f' (trial {parent})' if parent is not None else ''} late in training; "
                f"last eval {fmt_value(r.last_value)}")
    if r.state == TrialState.FAIL:
        return str(r.trial.fail_reason or "no reason recorded (worker killed? heartbeat went stale)")
    return "not finished (running, or its worker died)"


def _trial_header(data: StudyData) -> list[str]:
    kind = next((r.metrics.get("peak_mem_kind") for r in data.trials if r.metrics.get("peak_mem_kind")), None)
    return ["#", "ladder", "rank", "seed", "role", "searched", "state", data.objective, "exact match", "alpha",
            "trainable params", "steps", "time", f"peak mem (GB{', ' + str(kind) if kind else ''})", "tok/s",
            "adapter MB", "output dir", "W&B run"]


def _counts(data: StudyData) -> str:
    counts: dict[str, int] = {}
    for r in data.trials:
        counts[r.state.name] = counts.get(r.state.name, 0) + 1
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
    rec = {(lad.key, lad.recommendation.rank) for lad in data.ladders if lad.recommendation}
    chosen = {r.number for r in figures.value_rows(data)}
    return StudyView(
        data=data, ladders=ladder_views(data), counts=_counts(data),
        recommended={r.number for r in rows if r.number in chosen and (r.ladder, r.rank) in rec},
        chosen=chosen, settings=settings_rows(data), trial_header=_trial_header(data),
        failures=[(r, failure_reason(r)) for r in rows if r.state != TrialState.COMPLETE],
        output_links={r.number: Link.to(r.output_dir, r.output_dir.name if r.output_dir else "-") for r in rows},
        wandb_links={r.number: Link.to(r.wandb_dir, r.wandb_dir.name) if r.wandb_dir else
                     (Link(r.wandb_run, r.wandb_run) if r.wandb_run else None) for r in rows},
        summary_runs=_summary_run_links(data))


def _draw_study(figs: figures.Figures, view: StudyView, index: int) -> StudyView:
    colors = figures.ladder_colors(view.data, index)
    for v in view.ladders:
        lad = v.ladder
        v.curve_fig = figures.ladder_figure(figs, view.data, lad, colors.get(lad.key, figures.COLORS[0]))
        v.gain_fig = figures.gain_figure(figs, view.data, lad, [r.doubling for r in v.rows if r.doubling])
        v.search_fig = figures.search_figure(figs, view.data, lad)
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
    env.filters["param"] = param_text
    env.globals["steps"] = trial_steps
    env.globals["keys"] = keys  # user attributes by name: r.number_attr(keys.ALPHA)
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


GENERATOR = b'<meta name="generator" content="ranksweep report">'


def is_report(path: Path) -> bool:
    """Whether ``path`` is a report ranksweep wrote (its generator tag in the page's head)."""
    try:
        with open(path, "rb") as fh:
            return GENERATOR in fh.read(4096)
    except OSError:
        return False


def write_report(study_names: Sequence[str], storage_url: str = DEFAULT_STORAGE_URL,
                 out: Optional[str | os.PathLike[str]] = None) -> Path:
    """Load the studies, render the report and write it (atomically); return its path."""
    if not study_names:
        raise RanksweepError("report: name at least one study")
    dup = sorted({n for n in study_names if list(study_names).count(n) > 1})
    if dup:
        raise RanksweepError(f"report: study named twice: {', '.join(dup)}")
    from ranksweep.ownership import check_output_file
    from ranksweep.urls import storage_file

    target = Path(out) if out else default_report_path(study_names)
    if target.expanduser().is_dir():
        target = target / default_report_path(study_names).name
    # Checked before anything is read or written: never the storage, never a file ranksweep did not write.
    target = check_output_file(target, "--out", is_report, protect=[storage_file(storage_url)])
    studies = [load_study_data(n, storage_url) for n in study_names]
    html = render_report(studies)
    try:
        return atomic_write_text(target, html)
    except OSError as exc:  # under a regular file, a read-only place, a name too long: one line, nothing left
        raise RanksweepError(f"--out: cannot write {target}: {exc.strerror or exc}") from exc
