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
