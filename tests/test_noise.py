"""A confident claim survives another seed: every interval the margin rule decides on includes the training
noise (measured from the seeds a sweep runs), a rung without a value ends no ladder, a confidently negative
doubling counts as noise, and a ladder that cannot beat its untrained base says so."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranksweep.sweep.rules import Step, decide
from ranksweep.sweep.rules.margin import MarginRule
from ranksweep.sweep.stats import Examples, Interval, Noise, pooled_noise, with_training_noise

RULE = MarginRule(n_boot=400)


def _examples(rng, difficulty, tokens, values):
    """One row per seed: per-example losses whose token-weighted mean is each seed's value."""
    rows = []
    for v in values:
        row = difficulty * (1 + rng.normal(0, 0.01, len(difficulty)))
        rows.append(row / (row * tokens).sum() * tokens.sum() * v * tokens)
    return Examples.of(rows, tokens)


def _trial(number, rank, value, seed=0, slot=0, steps=100):
    """A COMPLETE trial as the reader sees it, its per-example losses ``value`` times fixed difficulties (60
    examples, one eval set), so that two such trials differ by exactly their values."""
    from optuna.trial import TrialState

    from ranksweep.sweep.results import Trial

    n = 60
    tokens = np.random.default_rng(0).integers(5, 30, n).astype(float)
    hard = np.random.default_rng(1).gamma(4.0, 0.25, n)
    loss = (hard * value * tokens).tolist()
    return Trial(number=number, ladder="default", rank=rank, seed=seed, state=TrialState.COMPLETE,
                 value=float(sum(loss) / tokens.sum()), params={"rank": rank, "seed": seed},
                 attrs={"ladder": "default", "rank": rank, "seed": seed, "slot": slot, "steps": steps,
                        "eval_examples": {"loss": loss, "tokens": tokens.tolist(), "fingerprint": "f", "n": n}})


def _step(rank, values, rng, difficulty, tokens):
    ex = _examples(rng, difficulty, tokens, values)
    return Step(rank, float(np.mean(values)), ex, [float(v) for v in values])


def test_training_noise_widens_an_interval_by_students_t():
    iv = Interval(0.03, 0.025, 0.035)  # the eval examples' interval alone: narrow
    got = with_training_noise(iv, Noise(0.011 ** 2, 2.0, "3 seeds"), 1, 1, 0.95)
    assert got.est == 0.03 and got.lo < 0 < got.hi  # two single-seed runs 1.4 sd apart: not a confident gain
    # known exactly (infinite degrees of freedom): the normal quantile, narrower than Student's t at 2 dof
    known = with_training_noise(iv, Noise(0.011 ** 2, math.inf, "given"), 1, 1, 0.95)
    assert known.hi - known.lo < got.hi - got.lo
    half = 1.959964 * math.sqrt(((iv.hi - iv.lo) / (2 * 1.959964)) ** 2 + 2 * 0.011 ** 2)
    assert known.hi - known.est == pytest.approx(half, rel=1e-5)
    assert pooled_noise([("r=1", [1.0]), ("r=2", [2.0])]) is None
    pooled = pooled_noise([("r=1", [1.0, 1.2]), ("r=2", [2.0, 2.1, 2.2])])
    assert pooled.dof == 3 and pooled.var == pytest.approx((0.02 + 0.02) / 3) and "3 seeds of r=2" in pooled.source


def test_the_null_task_gain_that_another_seed_erased_is_not_confident():
    """The issue's null task: r=2 -> 4 gained +0.033 with an interval over the examples of +0.028..+0.039 (one
    seed), while another seed moved a rank by 0.016. With the noise seeds of r=2 in the intervals, the gain is
    no longer confident, and r=2 is recommended."""
    rng = np.random.default_rng(0)
    difficulty, tokens = rng.gamma(4.0, 0.25, 400), rng.integers(5, 31, 400).astype(float)
    r2 = _step(2, [4.6743, 4.6584, 4.6690], rng, difficulty, tokens)  # seed 0 and two noise seeds
    r4 = _step(4, [4.6409], rng, difficulty, tokens)
    r8 = _step(8, [4.6600], rng, difficulty, tokens)
    steps = [r2, r4, r8]
    first = RULE.doublings(steps)[0]
    # Over the examples alone, the gain is confidently above the margin (what the old rule acted on) ...
    alone = RULE.improvement(Step(2, r2.value, Examples.of(r2.examples.num[:1], tokens), [4.6743]), r4)
    assert alone.lo > RULE.margin_abs(r4.value)
    # ... with the training noise it is not.
    assert not first.above and first.gain.lo < first.margin, first.text(95)
    rec = RULE.recommend(steps, None)
    assert rec.rank == 2, rec.why


def test_one_seed_per_rank_is_never_confident_without_a_noise_measure():
    steps = [Step(8, 2.0), Step(16, 1.5), Step(32, 1.0)]  # 25% and 33% gains, but nothing measured the noise
    assert not any(d.above for d in RULE.doublings(steps))
    # ... but their estimates are far above the margin: the data lean towards gains, so they end no ladder
    assert all(d.leaning for d in RULE.doublings(steps))
    d = decide(RULE, steps, None, max_rank=64, factor=2)
    assert not d.stop and d.next_rank == 64
    rec = RULE.recommend(steps, None)
    assert rec.rank == 8 and "cover the eval examples only" in rec.why
    # the same gains with two seeds at the first rank: the noise is small next to them, so they are confident
    steps[0] = Step(8, 2.0, None, [1.99, 2.01])
    assert all(d.above for d in RULE.doublings(steps))


def test_a_confidently_negative_doubling_counts_as_training_noise():
    """More rank cannot lose capacity: a doubling that is confidently worse shows noise the seeds did not, and
    joins the noise estimate, widening every interval (here, the r=8 -> 16 gain is no longer confident)."""
    steps = [Step(8, 2.0, None, [2.0, 2.001, 1.999]), Step(16, 1.9), Step(32, 2.1)]
    seeds_only = MarginRule(known_noise=0.001).doublings(steps)
    assert seeds_only[0].above and seeds_only[1].gain.hi < 0
    noise = RULE.noise(steps)
    assert noise.var > 0.001 ** 2 * 10 and "r=16->32" in noise.source
    ds = RULE.doublings(steps)
    assert not ds[0].above  # r=8 -> 16's +0.1 is within the noise r=16 -> 32's -0.2 revealed
    notes = RULE.compare(steps, RULE.recommend(steps, None)).notes
    assert "confidently worse" in notes.get(32, "") or "confidently worse" in " ".join(notes.values())


def test_a_pruned_rung_ends_no_ladder():
    """The null task's r=8 was pruned at 75% of training against its parent and ended the ladder as 'no
    confident gain': a rung without a value is no evidence either way, so the ladder goes on."""
    r1 = Step(1, 2.0, None, [2.0, 2.01, 1.99])
    steps = [r1, Step(2, 1.99), Step(4, None, note="every trial pruned")]
    d = decide(RULE, steps, None, max_rank=64, factor=2)
    assert not d.stop and d.next_rank == 8, d.reason


def test_no_rank_beats_the_untrained_base():
    rng = np.random.default_rng(1)
    difficulty, tokens = rng.gamma(4.0, 0.25, 300), rng.integers(5, 31, 300).astype(float)
    base = _step(0, [1.772], rng, difficulty, tokens)
    steps = [_step(1, [1.785, 1.779, 1.790], rng, difficulty, tokens), _step(2, [1.781], rng, difficulty, tokens),
             _step(4, [1.792], rng, difficulty, tokens)]
    rec = RULE.recommend(steps, base)
    assert rec.rank == 1
    assert "no rank beats the untrained base" in rec.why and "fine-tuning does not help at this budget" in rec.why
    # a real gain over the base reads as before
    better = [_step(1, [1.60, 1.61, 1.59], rng, difficulty, tokens), _step(2, [1.40], rng, difficulty, tokens)]
    rec = RULE.recommend(better, base)
    assert "untrained base" not in rec.why and rec.rank == 2


def test_null_ladders_with_training_noise_rarely_claim_a_confident_gain():
    """200 simulated null ladders (every rank the same true value; each run off by training noise of sd 0.3%
    and each example by 1.5%), noise seeds at the first rank as a sweep runs them: at most 5% of the doublings
    are 'confident gains', as the 95% intervals promise."""
    rule = MarginRule(n_boot=200)
    claims = doublings = 0
    for i in range(200):
        rng = np.random.default_rng(10_000 + i)
        difficulty, tokens = rng.gamma(4.0, 0.25, 200), rng.integers(5, 31, 200).astype(float)
        steps = []
        for k, rank in enumerate((1, 2, 4, 8)):
            seeds = 3 if k == 0 else 1
            values = [1.8 * (1 + rng.normal(0, 0.003)) for _ in range(seeds)]
            steps.append(_step(rank, values, rng, difficulty, tokens))
        ds = rule.doublings(steps)
        claims += sum(d.above for d in ds)
        doublings += len(ds)
    assert claims / doublings <= 0.05, f"{claims} confident gains in {doublings} null doublings"


@pytest.mark.slow
def test_a_sweep_measures_its_noise_and_checks_its_budget(tmp_path, rs_cache):
    """The real sweeper: the first rank runs its noise seeds, every interval includes the noise they show (the
    summary says so), and once the ladder stops the recommended rank and its neighbour are trained again at
    3x the steps (no pruning), their verdict in the budget line, the summary, and the study."""
    import json

    import optuna
    from helpers.run import sweep

    proc = sweep(tmp_path, rs_cache, "hydra.sweeper.study_name=noisy", "hydra.sweeper.noise_seeds=2",
                 "hydra.sweeper.budget_check=3", "hydra.sweeper.max_rank=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "outputs" / "sweeps" / "noisy" / "sweep_summary.json").read_text())
    (lad,) = doc["ladders"]
    first = lad["rungs"][0]
    assert first["rank"] == 8 and len(first["values"]) == 3  # seed 0 and two noise seeds
    assert lad["noise"]["dof"] >= 2 and "3 seeds of r=8" in lad["noise"]["source"]
    assert lad["noise_text"].startswith("the intervals cover the eval examples and the training noise")
    bc = lad["budget_check"]
    assert bc["factor"] == 3 and bc["verdict"] in ("holds", "flips", "inconclusive") and bc["steps"] == 36
    assert set(bc["ranks"]) <= {8, 16, 32} and all(v is not None for v in bc["values"].values())
    assert ("the verdict holds at 3x the steps" in lad["budget"]) == (bc["verdict"] == "holds")
    assert "noise: the intervals cover the eval examples and the training noise" in proc.stdout
    study = optuna.load_study(study_name="noisy", storage=f"sqlite:///{tmp_path / 'outputs' / 'ranksweep.db'}")
    longer = [t for t in study.trials if t.user_attrs.get("role") == "budget"]
    assert len(longer) == 2 and all(t.user_attrs["steps"] == 36 for t in longer)
    assert not any(t.user_attrs.get("parent_trial_number") is not None for t in longer)  # never pruned by a parent
    assert {t.user_attrs["rank"] for t in longer} == set(bc["ranks"])
    noise_seeds = [t for t in study.trials if t.user_attrs.get("rank") == 8 and t.user_attrs.get("seed") in (1, 2)]
    assert len(noise_seeds) == 2 and all(t.state.name == "COMPLETE" for t in noise_seeds)


def test_a_rank_whose_first_seed_failed_runs_no_noise_seed():
    """r=8's seed 0 hit its time limit: its noise seeds (the same values, the same limit) are not run, and the
    ladder goes on to r=16; while seed 0 trains, they may run beside it."""
    from optuna.trial import TrialState

    from ranksweep.sweep.plan import candidates
    from ranksweep.sweep.reader import read_ladders, spec_of
    from ranksweep.sweep.results import Trial
    from ranksweep.sweep.settings import SweepSettings

    def trial(number, rank, state, seed=0, **attrs):
        value = 2.0 if state == TrialState.COMPLETE else None
        return Trial(number=number, ladder="default", rank=rank, seed=seed, state=state, value=value,
                     params={"rank": rank, "seed": seed},
                     attrs={"ladder": "default", "rank": rank, "seed": seed, "slot": 0, **attrs})

    spec = spec_of(SweepSettings(max_rank=32, noise_seeds=2), [("default", ())])
    base = trial(0, 0, TrialState.COMPLETE)
    failed = trial(1, 8, TrialState.FAIL, failure_kind="timeout", fail_reason="time limit")
    (lad,) = read_ladders([base, failed], spec)
    items = [(i.rank, i.seed) for i, _ in candidates([lad], parallel=1)[0]]
    assert (8, 1) not in items and (8, 2) not in items and items[0] == (16, 0), items
    running = trial(1, 8, TrialState.RUNNING)
    (lad,) = read_ladders([base, running], spec)
    assert [(i.rank, i.seed) for i, _ in candidates([lad], parallel=1)[0]][:2] == [(8, 1), (8, 2)]


def test_the_budget_check_acts_only_on_what_its_longer_runs_show_with_confidence():
    """The sweep recommends r=16 over r=8. Trained 3x longer: r=16 confidently ahead by more than the margin
    holds; r=16 confidently behind flips to r=8 (bound by the budget); a gain whose interval straddles the
    margin is inconclusive and r=16 stands (the saturated bench task once flipped to the smaller rank here)."""
    from ranksweep.sweep.reader import read_ladders, spec_of
    from ranksweep.sweep.results import BUDGET_SLOT
    from ranksweep.sweep.settings import SweepSettings


    spec = spec_of(SweepSettings(max_rank=32, start_rank=8, noise_seeds=2, budget_check=3), [("default", ())])
    swept = [_trial(0, 0, 2.0, steps=0), _trial(1, 8, 1.50), _trial(2, 8, 1.504, seed=1), _trial(3, 8, 1.496, seed=2),
             _trial(4, 16, 1.40), _trial(5, 32, 1.399)]
    (lad,) = read_ladders(swept, spec)
    bc = lad.budget_check
    assert lad.recommendation.rank == 16 and (bc.lower, bc.upper, bc.steps) == (8, 16, 300)
    assert lad.budget.startswith("checking: r=8 and r=16 are trained again at 300 steps") and not lad.budget_bound
    seen = {}
    for upper, verdict, rank in ((1.30, "holds", 16), (1.45, "flips", 8), (1.385, "inconclusive", 16)):
        longer = [_trial(6, 8, 1.40, slot=BUDGET_SLOT, steps=300), _trial(7, 16, upper, slot=BUDGET_SLOT, steps=300)]
        (lad,) = read_ladders(swept + longer, spec)
        seen[verdict] = lad
        assert (lad.budget_check.verdict, lad.recommendation.rank) == (verdict, rank), lad.budget
        assert lad.budget_bound == (verdict == "flips") == lad.to_dict()["budget_bound"]
    g = seen["inconclusive"].budget_check.gain
    assert g.lo < seen["inconclusive"].budget_check.margin < g.hi
    unsure, flipped = seen["inconclusive"], seen["flips"]
    assert "the budget check is inconclusive" in unsure.budget and "r=16 stands" in unsure.budget
    assert "so r=8 when trained 300 steps" in flipped.budget and "r=8 by the budget check" in flipped.recommendation.why
    assert seen["holds"].budget.startswith("the verdict holds at 3x the steps")


def test_a_doubling_that_leans_towards_a_gain_ends_no_ladder():
    """The saturated bench task's ladder stopped at r=4 on two doublings gaining +0.050 and +0.026 with intervals
    straddling their margin (r=8 then beat r=4 by 0.12 in a single-lr run). A doubling whose estimate is above
    the margin but not its lower bound leans towards a gain: it is not counted, and the ladder goes on; it
    stops on doublings whose estimates are within the margin too."""
    rng = np.random.default_rng(5)
    difficulty, tokens = rng.gamma(4.0, 0.25, 400), rng.integers(5, 31, 400).astype(float)
    r1 = _step(1, [2.814, 2.79, 2.84], rng, difficulty, tokens)  # seed 0 and two noise seeds: sd 0.025
    r2, r4 = _step(2, [2.765], rng, difficulty, tokens), _step(4, [2.739], rng, difficulty, tokens)
    ds = RULE.doublings([r1, r2, r4])
    assert all(d.gain.lo < d.margin < d.gain.est and not d.above and d.leaning for d in ds), ds
    assert not decide(RULE, [r1, r2, r4], None, max_rank=32, factor=2).stop
    # Flat after r=4: the estimates are within the margin, and two such doublings stop the ladder there,
    # noise or not.
    flat = [r1, r2, r4, _step(8, [2.739], rng, difficulty, tokens), _step(16, [2.7391], rng, difficulty, tokens)]
    assert [d.leaning for d in RULE.doublings(flat)] == [True, True, False, False]
    d = decide(RULE, flat, None, max_rank=32, factor=2)
    assert d.stop and "r=4->8" in d.reason and "r=8->16" in d.reason


def test_a_ladder_that_ends_on_a_gain_says_the_top_rank_may_still_bind():
    """The saturated task (planted rank 64, ladder up to 32): r=16 -> 32 still gains confidently, so r=32 is
    recommended and the recommendation says that a larger max_rank may pay; a ladder flat at its top does not."""
    from ranksweep.sweep.reader import read_ladders, spec_of
    from ranksweep.sweep.settings import SweepSettings

    spec = spec_of(SweepSettings(max_rank=32, start_rank=8, budget_check=0), [("default", ())])
    head = [_trial(0, 0, 3.0), _trial(1, 8, 2.80), _trial(2, 8, 2.801, seed=1), _trial(3, 8, 2.799, seed=2),
            _trial(4, 16, 2.53)]
    (lad,) = read_ladders([*head, _trial(5, 32, 2.30)], spec)
    assert lad.stop_reason == "reached max_rank=32" and lad.recommendation.rank == 32
    assert "the top rank may still bind: r=16->32 gained +0.2" in lad.recommendation.why
    assert "a larger hydra.sweeper.max_rank may pay" in lad.to_dict()["recommendation"]["why"]
    (flat,) = read_ladders([*head, _trial(5, 32, 2.529)], spec)
    assert flat.recommendation.rank == 16 and "may still bind" not in flat.recommendation.why


def test_two_ranks_the_data_lean_between_get_more_seeds():
    """The bench's k=2 task at seed 1: r=1 -> 2 gained +0.026 against a margin of 0.009, its interval (3 seeds
    of r=1, so 2 degrees of freedom) reaching below the margin, and r=1 was recommended. Where the answer rests
    on two ranks the data lean between, both run resolve_seeds more seeds and are judged again: a gain the
    seeds confirm moves the answer to r=2, one they do not leaves r=1; with resolve_seeds=0 r=1 stands."""
    from ranksweep.sweep.plan import candidates
    from ranksweep.sweep.reader import read_ladders, spec_of
    from ranksweep.sweep.settings import SweepSettings

    def spec(resolve):
        return spec_of(SweepSettings(start_rank=1, max_rank=8, noise_seeds=2, budget_check=0, resolve_seeds=resolve),
                       [("default", ())])

    swept = [_trial(0, 0, 1.85), _trial(1, 1, 1.8117), _trial(2, 1, 1.8047, seed=1), _trial(3, 1, 1.8140, seed=2),
             _trial(4, 2, 1.7855), _trial(5, 4, 1.7860), _trial(6, 8, 1.7858)]
    (off,) = read_ladders(swept, spec(0))
    assert off.done and (off.recommendation.rank, off.recommendation.lean) == (1, 2), off.recommendation.why
    assert off.resolved == () and "within the noise" in off.recommendation.why
    (lad,) = read_ladders(swept, spec(2))
    assert not lad.done and lad.resolved == (1, 2) and lad.pending == [1, 2]
    todo = sorted((i.rank, i.seed) for i, _ in candidates([lad], parallel=2)[0])
    assert todo == [(1, 3), (1, 4), (2, 1), (2, 2)], todo
    for r2, rank in (((1.7852, 1.7861), 2), ((1.8102, 1.8095), 1)):  # the seeds confirm the gain, or they do not
        more = [_trial(7, 1, 1.8101, seed=3), _trial(8, 1, 1.8083, seed=4),
                _trial(9, 2, r2[0], seed=1), _trial(10, 2, r2[1], seed=2)]
        (lad,) = read_ladders(swept + more, spec(2))
        assert lad.done and lad.recommendation.rank == rank, lad.recommendation.why
        assert "5 seeds of r=1, 3 seeds of r=2" in lad.noise and "r=1 and r=2 ran 2 more seeds each" in lad.noise
        assert lad.to_dict()["resolved"] == [1, 2]
