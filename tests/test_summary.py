"""The JSON summary, the rank-curve PNG and the text table, all read off the one ladder model."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest
from helpers.curves import TABLE18_LOSS, TABLE18_RANKS
from optuna.trial import TrialState

from ranksweep.plot import base_off_axis, rank_curve_png
from ranksweep.sweep.conclude import conclude
from ranksweep.sweep.results import Ladder, Rung
from ranksweep.sweep.rules.share import ShareRule
from ranksweep.sweep.summary import SUMMARY_FILENAME, format_table, ladder_summary, write_summary


def _rung(rank, values, state=TrialState.COMPLETE, fail_reason=None, params_per_rank=98_304):
    n = len(values)
    rung = Rung(rank=rank, state=state, values=list(values), alpha=2.0 * rank,
                trial_numbers=list(range(rank, rank + max(n, 1))), trainable_params=params_per_rank * rank,
                duration_s=12.5 * rank, peak_mem_gb=1.0 + rank / 100, fail_reason=fail_reason)
    if n and all(math.isfinite(v) for v in values):
        mean = sum(values) / n
        assert rung.mean == pytest.approx(mean)
        assert rung.std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)
    return rung


def build_ladder(key, direction, objective, base, rungs, stop_reason, tolerance=0.05):
    """A ladder concluded by the share rule (these ladders have no per-example results to compare)."""
    return conclude(Ladder(key=key, direction=direction, objective=objective, base=base,
                           rungs=sorted(rungs, key=lambda r: r.rank), stop_reason=stop_reason),
                    ShareRule(direction, tolerance=tolerance))


@pytest.fixture
def table18_ladder():
    rungs = [_rung(r, [v - 0.004, v + 0.004]) for r, v in zip(TABLE18_RANKS, TABLE18_LOSS)]
    return build_ladder(
        key="targets=attn quant=none",
        direction="minimize",
        objective="eval_loss",
        base=None,
        rungs=rungs,
        stop_reason="reached max_rank=1024",
    )


@pytest.fixture
def acc_ladder():
    rungs = [
        _rung(8, [0.50]),
        _rung(16, [0.62]),
        _rung(32, [0.68]),
        _rung(64, [0.70]),
        _rung(128, [], state=TrialState.FAIL, fail_reason="CUDA out of memory"),
        _rung(256, [0.30], state=TrialState.PRUNED, fail_reason="pruned at step 40"),
    ]
    return build_ladder(
        key="targets=all_linear quant=nf4",
        direction="maximize",
        objective="exact_match",
        base=0.20,
        rungs=rungs,
        stop_reason="gain share below 5% for 2 doublings (r=64: 2.9%, r=128: no gain over base)",
    )


def test_build_ladder_fills_recommendation(table18_ladder):
    rec = table18_ladder.recommendation
    assert rec.rank == 16
    assert rec.knee == 16  # the share rule's knee, in its own recommendation only
    assert rec.best_rank == 16
    assert table18_ladder.to_dict()["knee"] == 16
    assert "r=16" in rec.why
    assert [r.rank for r in table18_ladder.curve] == TABLE18_RANKS


def test_build_ladder_only_complete_rungs_count(acc_ladder):
    # the PRUNED r=256 (0.30) and the FAILED r=128 do not enter: the best COMPLETE rung is r=64
    rec = acc_ladder.recommendation
    assert rec.best_rank == 64
    assert rec.tolerance_abs == pytest.approx(0.05 * (0.70 - 0.20))
    # the smallest rank within 0.025 of 0.70 among 0.50, 0.62, 0.68, 0.70 is r=32
    assert rec.rank == 32


def test_build_ladder_sorts_and_handles_no_complete():
    lad = build_ladder(
        "k",
        "minimize",
        "eval_loss",
        2.0,
        [_rung(16, [], state=TrialState.FAIL, fail_reason="nan loss"),
         _rung(8, [], state=TrialState.FAIL, fail_reason="oom")],
        "all rungs failed",
    )
    assert [r.rank for r in lad.curve] == [8, 16]
    assert lad.recommendation is None
    assert lad.to_dict()["knee"] is None
    assert "no recommendation" in format_table([lad])


def test_write_summary_roundtrip(tmp_path, table18_ladder, acc_ladder):
    ladders = [table18_ladder, acc_ladder]
    path = write_summary(tmp_path / SUMMARY_FILENAME, ladders)
    assert path == tmp_path / SUMMARY_FILENAME
    text = path.read_text()
    doc = json.loads(text)
    assert doc == ladder_summary(ladders)
    assert doc["schema_version"] == 1
    assert doc["ladders"] == json.loads(json.dumps([lad.to_dict() for lad in ladders]))
    assert doc["ladders"][0]["recommendation"]["rank"] == 16
    # the keys of earlier summaries are all still there (new ones may be added)
    assert set(doc["ladders"][0]) >= {"key", "direction", "objective", "base", "rungs", "stop_reason",
                                      "recommendation", "knee"}
    assert set(doc["ladders"][0]["rungs"][0]) >= {
        "rank", "alpha", "values", "mean", "std", "seeds", "trial_numbers", "trainable_params", "duration_s",
        "peak_mem_gb", "state", "fail_reason", "output_dirs", "wandb_runs", "lrs"}
    assert doc["ladders"][1]["rungs"][4]["fail_reason"] == "CUDA out of memory"
    # stable: sorted keys, indent 2, identical on rewrite, no temp files left behind
    assert text == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    write_summary(path, ladders)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_FILENAME]


def test_write_summary_into_directory_and_nan(tmp_path):
    rungs = [_rung(8, [1.0]), _rung(16, [0.9]), _rung(32, [float("nan")], state=TrialState.FAIL, fail_reason="nan")]
    rungs[2].mean = float("nan")
    lad = build_ladder("k", "minimize", "eval_loss", 2.0, rungs, "failed")
    path = write_summary(tmp_path, [lad])
    assert path == tmp_path / SUMMARY_FILENAME
    doc = json.loads(path.read_text())
    assert doc["ladders"][0]["rungs"][2]["values"] == [None]
    assert doc["ladders"][0]["rungs"][2]["mean"] is None


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_rank_curve_png(tmp_path, table18_ladder, acc_ladder):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    for name, ladders in [("one.png", [table18_ladder]), ("two.png", [table18_ladder, acc_ladder])]:
        path = rank_curve_png(tmp_path / name, ladders)
        data = path.read_bytes()
        assert len(data) > 10_000
        width, height = _png_size(data)
        assert width >= 600 and height >= 400
    # plotting leaves pyplot alone
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_plot_rank_curve_degenerate(tmp_path):
    lad = build_ladder("", "minimize", "eval_loss", None, [_rung(8, [1.0])], "reached max_rank=8")
    data = rank_curve_png(tmp_path / "sub" / "single.png", [lad]).read_bytes()
    assert _png_size(data)[0] > 0


def test_format_table(table18_ladder, acc_ladder):
    text = format_table([table18_ladder, acc_ladder])
    lines = text.splitlines()
    for rank in TABLE18_RANKS:
        assert any(line.strip().startswith(f"{rank} |") for line in lines), rank
    for rank in [8, 16, 32, 64, 128, 256]:
        assert any(line.strip().startswith(f"{rank} |") for line in lines), rank
    assert "recommended r=16: " + table18_ladder.recommendation.why in text
    assert "recommended r=32: " + acc_ladder.recommendation.why in text
    assert "[targets=attn quant=none] eval_loss (minimize)" in text
    assert "[targets=all_linear quant=nf4] exact_match (maximize, base 0.2000)" in text
    assert "FAIL (CUDA out of memory)" in text
    assert "PRUNED (pruned at step 40)" in text
    assert "1.1600 ± 0.0057" in text
    assert "100.0%" in text  # first accuracy rung: the whole gain so far
    assert "stopped: reached max_rank=1024" in text
    header = next(line for line in lines if "rank" in line and "alpha" in line)
    for col in ("mean ± std", "share", "params", "time", "state"):
        assert col in header


def test_base_off_axis_rule():
    """make sweep's ladder: the base (7.37) is named in the legend, a nearby base is drawn."""
    means = [2.068, 1.825, 1.704]
    assert base_off_axis(7.366, means)
    assert not base_off_axis(2.5, means)
    assert not base_off_axis(7.366, [2.0]), "one rank: no spread to compare with"
    assert not base_off_axis(7.366, [])


def test_the_plot_marks_one_answer(table18_ladder):
    """The recommended rank is the one rank marked: no knee beside it, even from the share rule's ladder."""
    from ranksweep.plot import draw_ladder, new_figure

    _, (ax,) = new_figure(4, 3)
    draw_ladder(ax, table18_ladder, detail=True)
    labels = ax.get_legend_handles_labels()[1]
    assert "recommended r=16" in labels and not any("knee" in label for label in labels)


def test_a_rungs_row_is_built_once(acc_ladder):
    """Ladder.rows: each rung's value, share and state, as the JSON, the text table and the model card show them."""
    from ranksweep.export import _curve_table
    from ranksweep.sweep.results import mean_std
    from ranksweep.sweep.rules.share import gain_shares

    rows = acc_ladder.rows()
    assert [r.rank for r in rows] == [8, 16, 32, 64, 128, 256]
    done = [r for r in rows if r.complete]
    assert [r.share for r in done] == gain_shares(0.20, [0.50, 0.62, 0.68, 0.70], "maximize")
    assert all(r.share is None for r in rows if not r.complete)
    assert (rows[4].state, rows[4].reason) == (TrialState.FAIL, "CUDA out of memory")
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([1.5]) == (1.5, 0.0) and mean_std([]) == (None, None)
    doc = acc_ladder.to_dict()["rungs"]
    assert [d["mean"] for d in doc] == [r.mean for r in rows] and [d["std"] for d in doc] == [r.std for r in rows]
    table = format_table([acc_ladder])
    card = "\n".join(_curve_table(acc_ladder, 32))
    for r in done:
        assert f"{r.share * 100:.1f}%" in table and f"{100 * r.share:.1f}%" in card


# ----------------------------------------------------------------------------- the nested prescreen


PREFIXES = {1: 2.31, 2: 2.10, 4: 2.04, 8: 2.03, 16: 2.025, 32: 2.02}  # the one nested run, read at each prefix


def _trained(number, rank, value, steps=100):
    from ranksweep.sweep.results import Job, JobStatus, Trial

    t = Trial(number=number, ladder="default", rank=rank, seed=0, state=TrialState.COMPLETE, value=value,
              attrs={"role": "rung", "steps": steps, "duration_s": 10.0})
    return Job(seed=0, slot=0, status=JobStatus.DONE, trial=t)


def prescreen_ladder(verdict="confirmed", fallback="", candidate=4, fail_reason=None):
    """A ladder of hydra.sweeper.prescreen=nested, built by hand: the prescreen at r=32 (200 steps) put the
    candidate at r=4; r=2, 4 and 8 were trained on their own to confirm it (100 steps each), r=16 and r=32 were
    not (skipped)."""
    from ranksweep.sweep.results import PRESCREEN_SLOT, Job, JobStatus, Prescreen, Trial
    from ranksweep.sweep.rules import Doubling, Step
    from ranksweep.sweep.stats import Interval

    rungs = [_rung(r, [v]) for r, v in [(2, 2.12), (4, 2.02), (8, 1.99)]]
    for n, r in enumerate(rungs):
        r.jobs = [_trained(10 + n, r.rank, r.values[0])]
    rungs += [Rung(rank=16, skipped=True), Rung(rank=32, skipped=True)]
    lad = build_ladder("default", "minimize", "eval_loss", 3.0, rungs, "the confirmations settled it")
    failed = verdict == "failed"
    t = Trial(number=1, ladder="default", rank=32, seed=0, state=TrialState.FAIL if failed else TrialState.COMPLETE,
              value=None if failed else PREFIXES[32],
              attrs={"role": "prescreen", "steps": 200, "duration_s": 30.0,
                     **({"fail_reason": fail_reason} if fail_reason else {})})
    job = Job(seed=0, slot=PRESCREEN_SLOT, status=JobStatus.FAILED if failed else JobStatus.DONE, trial=t)
    ranks = sorted(PREFIXES)
    lad.prescreen = Prescreen(
        rank=32, job=job, steps=[] if failed else [Step(r, PREFIXES[r]) for r in ranks], candidate=candidate,
        why="r=4: no larger prefix is confidently better by the margin 0.01" if candidate else "",
        confirm=(2, 4, 8) if candidate else (), verdict=verdict, fallback=fallback,
        doublings=[] if failed else [Doubling(a, b, Interval(PREFIXES[a] - PREFIXES[b], 0.0, 0.3), 0.01,
                                              above=PREFIXES[a] - PREFIXES[b] > 0.05)
                                     for a, b in zip(ranks, ranks[1:])],
        agreement={} if failed else {"ranks": [2, 4, 8], "gap": {"2": -0.02, "4": 0.02, "8": 0.04},
                                     "kendall_tau": 1.0, "verdicts_same": 1, "verdicts_compared": 2})
    return lad


def test_format_table_shows_the_prescreen_and_the_cost():
    """The prescreen's line (its candidate, every prefix's value, the confirmations' verdict), its agreement with
    the separately trained ranks, and the ladder's cost with the prescreen's steps; the rest as without it."""
    lad = prescreen_ladder()
    lines = format_table([lad]).splitlines()
    assert ("  prescreen: nested r=32, 200 steps -> candidate r=4; prefixes r=1 2.3100, r=2 2.1000, r=4 2.0400, "
            "r=8 2.0300, r=16 2.0250, r=32 2.0200; confirmed at r=2, 4, 8") in lines
    assert ("  prescreen vs separately trained: gap (prefix - separate) r=2 -0.02, r=4 +0.02, r=8 +0.04; "
            "Kendall's tau 1.00; same confident-gain verdict on 1 of 2 doublings") in lines
    # 3 rungs x 100 steps and the prescreen's 200; 4 trials; 3 x 10 s + 30 s
    assert lines[-1] == "  cost: 500 steps in 4 trials (prescreen 200), 1m00s"
    # only the trained ranks are rows; skipped ranks are not on the curve
    assert [line.strip().split(" |")[0] for line in lines[2:5]] == ["2", "4", "8"]
    assert not any(line.strip().startswith(("16 |", "32 |")) for line in lines)
    # without the prescreen: the same lines but the prescreen's two, and a cost without it
    lad.prescreen = None
    plain = format_table([lad]).splitlines()
    assert [line for line in lines if "prescreen" not in line] == plain[:-1]
    assert plain[-1] == "  cost: 300 steps in 3 trials, 30.0s" and not any("prescreen" in x for x in plain)


@pytest.mark.parametrize("kwargs, want", [
    ({"verdict": "contradicted", "fallback": "r=8 is better than r=4 by more than the margin: the ladder runs "
      "from r=16"},
     "contradicted at r=2, 4, 8: r=8 is better than r=4 by more than the margin: the ladder runs from r=16"),
    ({"verdict": "failed", "candidate": None, "fail_reason": "CUDA out of memory",
      "fallback": "the prescreen failed: the whole ladder ran"},
     "failed: CUDA out of memory; the prescreen failed: the whole ladder ran"),
    ({"verdict": ""}, "running (confirming at r=2, 4, 8)"),
    ({"verdict": "", "candidate": None}, "running"),
])
def test_format_table_says_how_the_prescreen_ended(kwargs, want):
    lad = prescreen_ladder(**kwargs)
    (line,) = [x for x in format_table([lad]).splitlines() if x.startswith("  prescreen: ")]
    assert line.endswith("; " + want), line
    assert ("-> candidate r=4;" in line) == (kwargs.get("candidate", 4) == 4)
    if kwargs["verdict"] == "failed":  # no prefix was read; no agreement line; its steps still count
        assert "-> no candidate; prefixes none yet;" in line
        assert "prescreen vs separately trained" not in format_table([lad])
        assert format_table([lad]).splitlines()[-1].startswith("  cost: 500 steps in 4 trials (prescreen 200)")


def test_a_ladder_without_a_prescreen_has_no_prescreen_line_but_its_cost(table18_ladder, acc_ladder):
    text = format_table([table18_ladder, acc_ladder])
    assert "prescreen" not in text
    # built by hand, without trials: nothing trained that the ladder knows of
    assert [x for x in text.splitlines() if x.startswith("  cost: ")] == ["  cost: 0 steps in 0 trials"] * 2


def test_the_plot_draws_the_prescreen_beside_the_ladder(tmp_path):
    """The prefix values are computed once (prescreen_curve) and drawn as a dashed line with hollow markers
    beside the separately trained ranks, the candidate marked; the PNG differs from the one without."""
    from ranksweep.plot import PRESCREEN_LABEL, draw_ladder, new_figure, prescreen_curve

    lad = prescreen_ladder()
    curve = prescreen_curve(lad)
    assert curve.ranks == tuple(sorted(PREFIXES)) and curve.values == tuple(PREFIXES[r] for r in curve.ranks)
    assert curve.candidate == (4, PREFIXES[4]) and curve.confirm == (2, 4, 8) and curve.verdict == "confirmed"
    _, (ax,) = new_figure(4, 3)
    drawn = draw_ladder(ax, lad, detail=True)
    assert set(drawn) == {1, 2, 4, 8, 16, 32}, "the axis has a tick at every prefix"
    handles, labels = ax.get_legend_handles_labels()
    line = handles[labels.index(PRESCREEN_LABEL)]
    assert list(line.get_xdata()) == list(curve.ranks) and list(line.get_ydata()) == list(curve.values)
    assert line.get_linestyle() == "--" and line.get_markerfacecolor() == "white"
    mark = handles[labels.index("prescreen candidate r=4, confirmed")]
    assert (list(mark.get_xdata()), list(mark.get_ydata())) == ([4], [PREFIXES[4]])
    assert mark.get_markerfacecolor() == "none"
    assert "recommended r=4" in labels  # the ladder's own answer, on the separately trained ranks
    # several ladders on one axes: each prescreen named after its ladder; the overlays leave it out
    _, (ax,) = new_figure(4, 3)
    draw_ladder(ax, lad, detail=False)
    assert f"default: {PRESCREEN_LABEL}" in ax.get_legend_handles_labels()[1]
    _, (ax,) = new_figure(4, 3)
    assert set(draw_ladder(ax, lad, detail=False, prescreen=False)) == {2, 4, 8}
    assert not any("prescreen" in x for x in ax.get_legend_handles_labels()[1])
    with_png = rank_curve_png(tmp_path / "with.png", [lad]).read_bytes()
    running = prescreen_ladder(verdict="", candidate=None)
    assert prescreen_curve(running).candidate is None  # the line, no candidate yet
    lad.prescreen = None
    assert prescreen_curve(lad) is None
    without = rank_curve_png(tmp_path / "without.png", [lad]).read_bytes()
    assert _png_size(with_png) == _png_size(without) and with_png != without
    failed = prescreen_ladder(verdict="failed", candidate=None, fail_reason="oom")
    assert prescreen_curve(failed) is None  # no prefix read: nothing to draw


def test_the_wandb_summary_run_logs_the_prescreen(tmp_path, monkeypatch):
    """The summary run (offline), read back: the prescreen's table beside the separately trained values, its
    candidate, verdict and steps in the summary, and every ladder's cost."""
    import subprocess
    from pathlib import Path

    from ranksweep import tracking
    from ranksweep.sweep.settings import SweepSettings

    monkeypatch.setenv("WANDB_SILENT", "true")
    lad = prescreen_ladder()
    png = rank_curve_png(tmp_path / "rank_curve.png", [lad])
    logger = {"name": "wandb", "enabled": True, "mode": "offline", "project": "p", "dir": str(tmp_path), "tags": []}
    run_dir = tracking.log_sweep_summary(logger, [lad], SweepSettings(study_name="w", max_rank=32), tmp_path, png)
    (table,) = Path(run_dir).glob("files/media/table/prescreen_curve_[0-9]*.table.json")
    doc = json.loads(table.read_text())
    rows = [dict(zip(doc["columns"], row)) for row in doc["data"]]
    assert [(r["rank"], r["prefix_value"], r["separate_value"]) for r in rows] == [
        (1, 2.31, None), (2, 2.10, 2.12), (4, 2.04, 2.02), (8, 2.03, 1.99), (16, 2.025, None), (32, 2.02, None)]
    assert [r["gap"] for r in rows] == [None, -0.02, 0.02, 0.04, None, None]  # the agreement's
    assert [r["rank"] for r in rows if r["candidate"]] == [4] and [r["rank"] for r in rows if r["confirm"]] == [2, 4, 8]
    assert {r["ladder"] for r in rows} == {"default"}
    (plot,) = Path(run_dir).glob("files/media/table/prescreen_curve_plot_table_*.table.json")
    plot = json.loads(plot.read_text())  # the chart's two curves: (log2 rank, series, value)
    series = {}
    for x, key, y in plot["data"]:
        series.setdefault(key, []).append((round(2 ** x), y))
    assert series == {"nested prescreen (one run)": [(r, PREFIXES[r]) for r in sorted(PREFIXES)],
                      "separately trained": [(2, 2.12), (4, 2.02), (8, 1.99)]}
    proc = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                           run_dir], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)["summary"]
    assert (summary["prescreen_candidate"], summary["prescreen_verdict"]) == (4, "confirmed")
    assert (summary["prescreen_steps"], summary["cost_steps"], summary["cost_trials"]) == (200, 500, 4)
    assert summary["prescreen_confirm"] == [2, 4, 8] and summary["prescreen_kendall_tau"] == 1.0
    assert summary["recommended_rank"] == lad.recommendation.rank
