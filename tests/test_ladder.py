"""Table tests for the rank ladder and the share rule (ranksweep.sweep.rules.share): gain shares, its
decisions, the knee and its recommendation."""

from __future__ import annotations

import dataclasses
import math

import pytest
from helpers.curves import TABLE18_LOSS, TABLE18_RANKS

from ranksweep.sweep import rules
from ranksweep.sweep.ladder import rank_ladder
from ranksweep.sweep.rules import Decision, Recommendation, Step
from ranksweep.sweep.rules.share import ShareRule, find_knee, gain_shares


def decide(rule, base, ranks, values, direction, max_rank, factor):
    """The share rule's decision (with max_rank) on rungs ``ranks`` with per-seed ``values``."""
    steps = [Step(r, sum(v) / len(v) if v else None, seed_values=list(v)) for r, v in zip(ranks, values)]
    return rules.decide(dataclasses.replace(rule, direction=direction), steps, base, max_rank, factor)


def recommend(base, ranks, means, direction, tolerance=0.05):
    """The share rule's recommendation on rungs ``ranks`` with values ``means``."""
    return ShareRule(direction, tolerance=tolerance).recommend([Step(r, m) for r, m in zip(ranks, means)], base)


# A clean curve where each doubling buys half of the previous one: gains over base 1, 1.5, 1.75, ...
HALVING_RANKS = [8, 16, 32, 64, 128, 256]
HALVING_BASE = 3.0
HALVING_LOSS = [HALVING_BASE - sum(0.5**i for i in range(k + 1)) for k in range(6)]

# Monotone accuracy curve (maximize), base model accuracy 0.20.
ACC_RANKS = [8, 16, 32, 64, 128, 256]
ACC_BASE = 0.20
ACC = [0.50, 0.62, 0.68, 0.70, 0.705, 0.707]

SHIFTS = [-1000.0, -3.5, 0.0, 0.25, 42.0, 1e4]
SCALES = [1e-3, 0.5, 1.0, 7.0, 1e3]


def _affine(xs, shift, scale):
    return [x * scale + shift for x in xs]


# --------------------------------------------------------------------------- rank_ladder


@pytest.mark.parametrize(
    "start, factor, max_rank, expected",
    [
        (8, 2, 256, [8, 16, 32, 64, 128, 256]),
        (8, 2, 200, [8, 16, 32, 64, 128]),
        (8, 2, 8, [8]),
        (1, 2, 16, [1, 2, 4, 8, 16]),
        (4, 4, 256, [4, 16, 64, 256]),
        (3, 3, 100, [3, 9, 27, 81]),
    ],
)
def test_rank_ladder(start, factor, max_rank, expected):
    assert rank_ladder(start, factor, max_rank) == expected


def test_rank_ladder_needs_a_ladder():
    with pytest.raises(ValueError):
        rank_ladder(0, 2, 256)
    with pytest.raises(ValueError):
        rank_ladder(8, 1, 256)


# --------------------------------------------------------------------------- gain_shares


@pytest.mark.parametrize(
    "base, means, direction, expected",
    [
        # halving: 1, +0.5, +0.25, +0.125 -> 1, .5/1.5, .25/1.75, .125/1.875
        (3.0, [2.0, 1.5, 1.25, 1.125], "minimize", [1.0, 1 / 3, 0.25 / 1.75, 0.125 / 1.875]),
        (0.0, [1.0, 1.5, 1.75], "maximize", [1.0, 1 / 3, 0.25 / 1.75]),
        # worse than before: negative share, denominator is the best gain so far
        (3.0, [2.0, 1.0, 1.5], "minimize", [1.0, 0.5, -0.25]),
        # no gain over base at first: undefined, then a first real gain
        (1.0, [1.2, 1.1, 0.9], "minimize", [None, None, (0.1 - (-0.1)) / 0.1]),
        (1.0, [1.0, 1.0], "minimize", [None, None]),
        # no base: the first rung is the reference
        (None, [2.0, 1.5, 1.25], "minimize", [None, 1.0, 0.25 / 0.75]),
        (3.0, [], "minimize", []),
    ],
)
def test_gain_shares(base, means, direction, expected):
    got = gain_shares(base, means, direction)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            assert g == pytest.approx(e)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("scale", SCALES)
def test_gain_shares_invariant(shift, scale):
    ref = gain_shares(HALVING_BASE, HALVING_LOSS, "minimize")
    got = gain_shares(HALVING_BASE * scale + shift, _affine(HALVING_LOSS, shift, scale), "minimize")
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        gain_shares(1.0, [1.0], "lower")


# --------------------------------------------------------------------------- decide


def _one_seed(means):
    return [[m] for m in means]


# (name, base, ranks, values, direction, max_rank, stop, reason substring, next_rank)
DECIDE_CASES = [
    (
        "first rung continues",
        HALVING_BASE,
        HALVING_RANKS[:1],
        _one_seed(HALVING_LOSS[:1]),
        "minimize",
        256,
        False,
        "continue",
        16,
    ),
    (
        "halving: share 6.7% still buys -> continue",
        HALVING_BASE,
        HALVING_RANKS[:4],
        _one_seed(HALVING_LOSS[:4]),
        "minimize",
        256,
        False,
        "continue",
        128,
    ),
    (
        "halving: 6.7% then 3.2% -> one below is not enough",
        HALVING_BASE,
        HALVING_RANKS[:5],
        _one_seed(HALVING_LOSS[:5]),
        "minimize",
        1024,
        False,
        "continue",
        256,
    ),
    (
        "halving: 3.2% then 1.6% -> stop",
        HALVING_BASE,
        HALVING_RANKS,
        _one_seed(HALVING_LOSS),
        "minimize",
        1024,
        True,
        "gain share below 5% for 2 doublings (r=128: 3.2%, r=256: 1.6%)",
        None,
    ),
    (
        "max_rank reached exactly",
        HALVING_BASE,
        HALVING_RANKS[:4],
        _one_seed(HALVING_LOSS[:4]),
        "minimize",
        64,
        True,
        "reached max_rank=64",
        None,
    ),
    (
        "next rank would overshoot max_rank",
        HALVING_BASE,
        HALVING_RANKS[:4],
        _one_seed(HALVING_LOSS[:4]),
        "minimize",
        100,
        True,
        "reached max_rank=100 (next rank r=128 would exceed it)",
        None,
    ),
    (
        "accuracy still climbing",
        ACC_BASE,
        ACC_RANKS[:3],
        _one_seed(ACC[:3]),
        "maximize",
        256,
        False,
        "continue",
        64,
    ),
    (
        "accuracy flattening -> stop",
        ACC_BASE,
        ACC_RANKS,
        _one_seed(ACC),
        "maximize",
        1024,
        True,
        "gain share below 5% for 2 doublings (r=128: 1.0%, r=256: 0.4%)",
        None,
    ),
    (
        "worse doublings count as below min_gain",
        2.0,
        [8, 16, 32],
        _one_seed([1.0, 1.1, 1.2]),
        "minimize",
        256,
        True,
        "(r=16: -10.0%, r=32: -10.0%)",
        None,
    ),
    (
        "never beat the base -> stop, no gain over base",
        1.0,
        [8, 16, 32],
        _one_seed([1.3, 1.2, 1.1]),
        "minimize",
        256,
        True,
        "r=16: no gain over base, r=32: no gain over base",
        None,
    ),
    (
        "big shares but within seed noise -> stop",
        2.0,
        [8, 16, 32],
        [[1.0, 1.6, 0.4], [0.9, 1.5, 0.3], [0.8, 1.4, 0.2]],
        "minimize",
        256,
        True,
        "improvement within seed noise for 2 doublings",
        None,
    ),
    (
        "big shares outside seed noise -> continue",
        2.0,
        [8, 16, 32],
        [[1.0, 1.01, 0.99], [0.8, 0.81, 0.79], [0.6, 0.61, 0.59]],
        "minimize",
        256,
        False,
        "continue",
        64,
    ),
    (
        "one noisy doubling is not enough (patience)",
        2.0,
        [8, 16, 32],
        [[1.0, 1.01, 0.99], [0.8, 0.81, 0.79], [0.79, 0.80, 0.78]],
        "minimize",
        256,
        False,
        "continue",
        64,
    ),
    (
        "single seed everywhere: noise rule off",
        2.0,
        [8, 16, 32],
        _one_seed([1.0, 0.9, 0.8]),
        "minimize",
        256,
        False,
        "continue",
        64,
    ),
]


@pytest.mark.parametrize(
    "base, ranks, values, direction, max_rank, stop, reason, next_rank",
    [c[1:] for c in DECIDE_CASES],
    ids=[c[0] for c in DECIDE_CASES],
)
def test_decide(base, ranks, values, direction, max_rank, stop, reason, next_rank):
    d = decide(ShareRule(), base, ranks, values, direction, max_rank=max_rank, factor=2)
    assert isinstance(d, Decision)
    assert d.stop is stop
    assert reason in d.reason
    assert d.next_rank == next_rank
    assert len(d.shares) == len(ranks)
    if not stop:
        assert d.reason == "continue"


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", DECIDE_CASES, ids=[c[0] for c in DECIDE_CASES])
def test_decide_invariant(case, shift, scale):
    _, base, ranks, values, direction, max_rank, stop, _, next_rank = case
    moved = [_affine(v, shift, scale) for v in values]
    d = decide(ShareRule(), base * scale + shift, ranks, moved, direction, max_rank=max_rank, factor=2)
    ref = decide(ShareRule(), base, ranks, values, direction, max_rank=max_rank, factor=2)
    assert (d.stop, d.next_rank) == (stop, next_rank)
    # the reason names the same rule (shares in % are scale-free; noise numbers are not)
    assert d.reason.split("(")[0] == ref.reason.split("(")[0]


def test_decide_maximize_mirror_of_minimize():
    """Negating values and flipping the direction gives the same decision."""
    for _, base, ranks, values, direction, max_rank, stop, _, next_rank in DECIDE_CASES:
        flipped = "maximize" if direction == "minimize" else "minimize"
        d = decide(ShareRule(), -base, ranks, [[-v for v in vs] for vs in values], flipped, max_rank, 2)
        assert (d.stop, d.next_rank) == (stop, next_rank)


def test_decide_patience_and_min_gain_knobs():
    ranks, values = HALVING_RANKS[:5], _one_seed(HALVING_LOSS[:5])
    assert decide(ShareRule(patience=1), HALVING_BASE, ranks, values, "minimize", 1024, 2).stop
    assert decide(ShareRule(patience=1), HALVING_BASE, ranks, values, "minimize", 1024, 2).reason == (
        "gain share below 5% for 1 doubling (r=128: 3.2%)"
    )
    assert decide(ShareRule(min_gain=0.10), HALVING_BASE, ranks, values, "minimize", 1024, 2).stop
    assert not decide(
        ShareRule(min_gain=0.01), HALVING_BASE, HALVING_RANKS, _one_seed(HALVING_LOSS), "minimize", 1024, 2
    ).stop


def test_decide_factor():
    d = decide(ShareRule(), 2.0, [8], [[1.0]], "minimize", max_rank=1024, factor=4)
    assert d.next_rank == 32


@pytest.mark.parametrize(
    "base, ranks, values",
    [(2.0, [], []), (2.0, [8, 8], [[1.0], [0.9]]), (2.0, [16, 8], [[1.0], [0.9]]), (2.0, [8], [[math.nan]]),
     (math.nan, [8], [[1.0]]), (None, [8], [[1.0]])],
)
def test_decide_bad_input(base, ranks, values):
    with pytest.raises(ValueError):
        decide(ShareRule(), base, ranks, values, "minimize", 256, 2)


def test_a_rung_without_a_value_waits_for_the_next():
    """The share rule skips a rung whose trials all failed; as the last rung it continues (max_rank aside)."""
    d = decide(ShareRule(patience=1), 3.0, [8, 16, 32], [[2.0], [1.0], []], "minimize", 256, 2)
    assert (d.stop, d.reason, d.next_rank) == (False, "continue", 64)
    d = decide(ShareRule(patience=1), 3.0, [8, 16, 32, 64], [[2.0], [1.0], [], [0.99]], "minimize", 256, 2)
    assert d.stop and d.reason == "gain share below 5% for 1 doubling (r=64: 0.5%)"


def test_stop_rule_defaults():
    rule = ShareRule()
    assert (rule.direction, rule.min_gain, rule.patience, rule.noise_z, rule.tolerance) == (
        "minimize", 0.05, 2, 2.0, 0.05)
    assert rule.name == "share"


# --------------------------------------------------------------------------- knee


@pytest.mark.parametrize(
    "ranks, means, direction, expected",
    [
        (TABLE18_RANKS, TABLE18_LOSS, "minimize", 16),
        (TABLE18_RANKS, [-v for v in TABLE18_LOSS], "maximize", 16),
        (HALVING_RANKS, HALVING_LOSS, "minimize", 32),
        (ACC_RANKS, ACC, "maximize", 32),
        ([8, 16], [1.0, 0.9], "minimize", None),
        ([8], [1.0], "minimize", None),
        ([8, 16, 32, 64], [1.0, 1.0, 1.0, 1.0], "minimize", None),
        # a straight line on log2(r) has no knee
        ([8, 16, 32, 64, 128], [1.0, 0.9, 0.8, 0.7, 0.6], "minimize", None),
    ],
)
def test_find_knee(ranks, means, direction, expected):
    assert find_knee(ranks, means, direction) == expected


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("scale", SCALES)
def test_find_knee_invariant(shift, scale):
    assert find_knee(TABLE18_RANKS, _affine(TABLE18_LOSS, shift, scale), "minimize") == 16
    assert find_knee(ACC_RANKS, _affine(ACC, shift, scale), "maximize") == 32


# --------------------------------------------------------------------------- recommend


def test_recommend_lora_table18():
    rec = recommend(None, TABLE18_RANKS, TABLE18_LOSS, "minimize")
    assert isinstance(rec, Recommendation)
    assert rec.rank == 16
    assert rec.knee == 16
    assert rec.best_rank == 16
    assert rec.tolerance_abs == pytest.approx(0.05 * (1.23 - 1.16))
    assert "r=16" in rec.why and "0.0035" in rec.why and "1.1600" in rec.why
    assert "knee on log2(r) is at r=16" in rec.why


@pytest.mark.parametrize(
    "base, ranks, means, direction, tolerance, rank, best_rank",
    [
        # halving, total gain 1.96875, 5% = 0.098: r=64 (0.094 off the best) is within
        (HALVING_BASE, HALVING_RANKS, HALVING_LOSS, "minimize", 0.05, 64, 256),
        (HALVING_BASE, HALVING_RANKS, HALVING_LOSS, "minimize", 0.01, 256, 256),
        (HALVING_BASE, HALVING_RANKS, HALVING_LOSS, "minimize", 0.20, 32, 256),
        # accuracy: total gain 0.507, 5% = 0.02535: 0.68 is 0.027 off, 0.70 is 0.007 off
        (ACC_BASE, ACC_RANKS, ACC, "maximize", 0.05, 64, 256),
        (None, ACC_RANKS, ACC, "maximize", 0.05, 64, 256),
        # the best rank in the middle, later ranks worse: ties go to the smallest rank
        (2.0, [8, 16, 32, 64], [1.5, 1.2, 1.2, 1.4], "minimize", 0.0, 16, 16),
    ],
)
def test_recommend(base, ranks, means, direction, tolerance, rank, best_rank):
    rec = recommend(base, ranks, means, direction, tolerance=tolerance)
    assert (rec.rank, rec.best_rank) == (rank, best_rank)
    assert f"r={rank}" in rec.why


@pytest.mark.parametrize("base", [None, 1.0, 0.5])
def test_recommend_flat_curve(base):
    rec = recommend(base, [8, 16, 32, 64], [1.0] * 4, "minimize")
    assert rec.rank == 8
    assert rec.best_rank == 8
    assert rec.knee is None
    assert rec.tolerance_abs == 0.0
    assert "no gain" in rec.why


def test_recommend_flat_but_better_than_base():
    rec = recommend(2.0, [8, 16, 32], [1.0] * 3, "minimize")
    assert rec.rank == 8
    assert "within 5% of the total gain" in rec.why


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    "base, ranks, means, direction",
    [
        (None, TABLE18_RANKS, TABLE18_LOSS, "minimize"),
        (HALVING_BASE, HALVING_RANKS, HALVING_LOSS, "minimize"),
        (ACC_BASE, ACC_RANKS, ACC, "maximize"),
        (1.0, [8, 16, 32, 64], [1.0] * 4, "minimize"),
    ],
)
def test_recommend_invariant(base, ranks, means, direction, shift, scale):
    ref = recommend(base, ranks, means, direction)
    moved_base = None if base is None else base * scale + shift
    got = recommend(moved_base, ranks, _affine(means, shift, scale), direction)
    assert (got.rank, got.knee, got.best_rank) == (ref.rank, ref.knee, ref.best_rank)
    assert got.tolerance_abs == pytest.approx(ref.tolerance_abs * scale, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    "ranks, means",
    [([8, 8], [1.0, 1.0]), ([16, 8], [1.0, 0.9]), ([8, 16], [1.0, math.inf])],
)
def test_recommend_bad_input(ranks, means):
    with pytest.raises(ValueError):
        recommend(None, ranks, means, "minimize")


def test_recommend_nothing_without_a_value():
    assert recommend(None, [], [], "minimize") is None
    assert ShareRule().recommend([Step(8, None, note="every trial failed")], 2.0) is None


def test_recommend_bad_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        recommend(None, [8, 16], [1.0, 0.9], "minimize", tolerance=1.5)
