"""What a sweep leaves behind: ``sweep_summary.json``, the rank-curve PNG and a text table.

All three read the ladders of :mod:`ranksweep.sweep.results` (the JSON and the table each rung's row,
:meth:`~ranksweep.sweep.results.Ladder.rows`); the PNG is drawn by :func:`ranksweep.plot.rank_curve_png`,
the same drawing the HTML report uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ranksweep.files import atomic_write_json, jsonable
from ranksweep.fmt import fmt_params, fmt_pct, fmt_time, fmt_value
from ranksweep.sweep.results import Ladder, PrescreenVerdict, Row
from ranksweep.sweep.settings import SweepSettings

__all__ = ["SUMMARY_FILENAME", "format_table", "ladder_summary", "sweep_meta", "write_outputs", "write_summary"]

SUMMARY_FILENAME = "sweep_summary.json"
PLOT_FILENAME = "rank_curve.png"
SCHEMA_VERSION = 1


def sweep_meta(s: SweepSettings) -> dict[str, Any]:
    """The ``sweep`` block of the summary: the study and the rules the ladders followed, as the study records
    them (:meth:`SweepSettings.to_record`: every setting, ``ranks``, the storage URL masked)."""
    return s.to_record()


def ladder_summary(ladders: Sequence[Ladder], meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The document written to ``sweep_summary.json``: ``{"schema_version", "ladders", "sweep"}``.

    Plain JSON types only; NaN and infinities become ``null``.
    """
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "ladders": jsonable([lad.to_dict() for lad in ladders])}
    if meta is not None:
        doc["sweep"] = jsonable(meta)
    return doc


def write_summary(path: str | os.PathLike[str], ladders: Sequence[Ladder],
                  meta: Optional[dict[str, Any]] = None) -> Path:
    """Write :func:`ladder_summary` to ``path`` (a file, or a folder to hold ``sweep_summary.json``)."""
    target = Path(path)
    if target.is_dir():
        target = target / SUMMARY_FILENAME
    return atomic_write_json(target, ladder_summary(ladders, meta))


@dataclass(frozen=True)
class Outputs:
    summary: Path
    plot: Path


def write_outputs(sweep_dir: Path, ladders: Sequence[Ladder], s: SweepSettings) -> Outputs:
    """The summary JSON and the PNG of a finished sweep, in its folder, and ``best/`` (the recommended adapter
    with its model card, :func:`ranksweep.export.write_best`)."""
    from ranksweep.evidence import compare
    from ranksweep.export import write_best
    from ranksweep.plot import rank_curve_png
    from ranksweep.sweep.conclude import annotate

    for lad in ladders:  # the adapters' own evidence, read from their folders
        annotate(lad, compare)
    summary = write_summary(sweep_dir / SUMMARY_FILENAME, ladders, sweep_meta(s))
    outputs = Outputs(summary, rank_curve_png(sweep_dir / PLOT_FILENAME, ladders))
    write_best(sweep_dir, ladders, s)
    return outputs


def _lr(r: Row) -> str:
    if r.best_lr is None:
        return "-"
    return f"{r.best_lr:.1e}" + (f" ({r.lr_at_edge} edge)" if r.lr_at_edge else "") + (
        f" of {r.lrs_tried}" if r.lrs_tried > 1 else "")


def format_table(ladders: Sequence[Ladder]) -> str:
    """A short plain-text table per ladder plus its recommendation, budget and stop lines.

    Columns: rank | alpha | the rank's value (mean ± std over seeds) | its gain over the previous rank
    with a 95% interval (margin rule) | share of the gain over the base | the best learning rate found
    (with how many were tried, and a flag when it sits at the search range's edge) | params | time |
    state. Each row is the rung's :class:`~ranksweep.sweep.results.Row`. A ladder that ran the nested
    prescreen (``hydra.sweeper.prescreen=nested``) adds its line: the candidate, each prefix's value and the
    confirmations' verdict, and how far the prefixes agree with the separately trained ranks. Every ladder
    ends with what it cost (:attr:`~ranksweep.sweep.results.Ladder.cost`).
    """

    def ranks(rs: Sequence[int]) -> str:
        return "r=" + ", ".join(str(r) for r in rs)

    def prescreen_lines(lad: Ladder) -> list[str]:
        pre = lad.prescreen
        if pre is None:
            return []
        cand = f"candidate r={pre.candidate}" if pre.candidate is not None else "no candidate"
        prefixes = ", ".join(f"r={r} {fmt_value(v)}" for r, v in sorted(pre.values.items())) or "none yet"
        checks = f" at {ranks(pre.confirm)}" if pre.confirm else ""
        if pre.verdict == PrescreenVerdict.CONFIRMED:
            verdict = f"confirmed{checks}"
        elif pre.verdict == PrescreenVerdict.CONTRADICTED:
            verdict = f"contradicted{checks}" + (f": {pre.fallback}" if pre.fallback else "")
        elif pre.verdict == PrescreenVerdict.FAILED:
            reason = (pre.trial.fail_reason if pre.trial is not None else None) or pre.fallback or "no reason recorded"
            verdict = f"failed: {reason}" + (f"; {pre.fallback}" if pre.fallback and pre.fallback != reason else "")
        else:
            verdict = f"running (confirming{checks})" if checks else "running"
        lines = [f"  prescreen: nested r={pre.rank}, {pre.train_steps:,} steps -> {cand}; prefixes {prefixes}; "
                 f"{verdict}"]
        agree = pre.agreement or {}
        gaps = {int(r): g for r, g in (agree.get("gap") or {}).items() if g is not None}
        if gaps:
            tau, compared = agree.get("kendall_tau"), agree.get("verdicts_compared")
            same = agree.get("verdicts_same", 0)
            lines.append("  prescreen vs separately trained: gap (prefix - separate) "
                         + ", ".join(f"r={r} {g + 0.0:+.3g}" for r, g in sorted(gaps.items()))
                         + (f"; Kendall's tau {tau:.2f}" if tau is not None else "")
                         + (f"; same confident-gain verdict on {same} of {compared} doublings" if compared else ""))
        return lines

    def cost_line(lad: Ladder) -> str:
        c = lad.cost
        parts = ([f"prescreen {c['prescreen_steps']:,}"] if lad.prescreen is not None else []) + (
            [f"budget check {c['budget_check_steps']:,}"] if lad.budget_check is not None else [])
        return (f"  cost: {c['steps']:,} steps in {c['trials']} trials" + (f" ({', '.join(parts)})" if parts else "")
                + (f", {fmt_time(c['duration_s'])}" if c.get("duration_s") else ""))

    out: list[str] = []
    for lad in ladders:
        lines = lad.rows()
        gains = any(r.gain is not None for r in lines)
        header = ("rank", "alpha", "mean ± std") + (("gain (95% CI)",) if gains else ()) + (
            "share", "best lr", "params", "time", "state")
        base_txt = f", base {fmt_value(lad.base)}" if lad.base is not None else ""
        out.append(f"[{lad.label}] {lad.objective} ({lad.direction}{base_txt})")
        rows: list[tuple[str, ...]] = [header]
        for r in lines:
            obj = "-" if r.mean is None else f"{fmt_value(r.mean)} ± {fmt_value(r.std or 0.0)}"
            share = fmt_pct(r.share) if r.complete else "-"
            gain = (r.gain.short() if r.gain is not None else "-",) if gains else ()
            rows.append((str(r.rank), f"{r.alpha:g}" if r.alpha is not None else "-", obj, *gain, share, _lr(r),
                         fmt_params(r.trainable_params), fmt_time(r.duration_s),
                         r.state.name + (f" ({r.reason})" if r.reason else "")))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            out.append("  " + " | ".join([c.rjust(w) for c, w in zip(row[:-1], widths)] + [row[-1]]))
        rec = lad.recommendation
        out.append(f"  recommended r={rec.rank}: {rec.why}" if rec else "  no recommendation: no rank completed")
        if lad.budget:
            out.append(f"  budget: {lad.budget}")
        if gains and lad.noise:
            out.append(f"  noise: {lad.noise}")
        edges = [r.rank for r in lad.complete if r.lr_at_edge]
        if edges:
            out.append("  learning rate: the best value sits at the edge of the search range for "
                       + ", ".join(f"r={x}" for x in edges) + "; widen hydra.sweeper.search")
        out += prescreen_lines(lad)
        if lad.stop_reason:
            out.append(f"  stopped: {lad.stop_reason}")
        out.append(cost_line(lad))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n" if out else ""
