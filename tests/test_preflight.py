"""A sweep's whole plan is checked before its first trial is recorded (ranksweep.sweep.preflight).

Every value of the search space (each choice, both ends of an interval), every ladder (one per axis value)
and the first and last rank are composed as their jobs will be; a bad one is one line naming its key and
value, exit code 2, and nothing is written: no storage, no sweep folder, no study to refuse the corrected
command as "a different search space".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from helpers.run import TINY_SWEEP, inprocess, one_line_error

# The tiny sweep, its max_rank left to each case.
TINY = ["logger=none", *(a for a in TINY_SWEEP if not a.startswith("hydra.sweeper.max_rank="))]
GOOD = "+hydra.sweeper.search={trainer.lr: 'tag(log, interval(1e-4, 1e-2))', lora.dropout: 'choice(0.0, 0.05)'}"
SMALL = ("hydra.sweeper.search_budget=2", "hydra.sweeper.max_rank=16")

# id -> (arguments, the error line)
CASES = {
    "middle_choice": (
        ("hydra.sweeper.search.trainer.lr=choice(1e-3, -1, 5e-3)",),
        "hydra.sweeper.search.trainer.lr: choice value -1: trainer.lr must be a positive number, got -1.0"),
    "interval_upper_end": (
        ("hydra.sweeper.search.lora.dropout=interval(0.0, 1.5)",),
        "hydra.sweeper.search.lora.dropout: interval upper end 1.5: lora.dropout must be in [0, 1), got 1.5"),
    "second_key_choice": (
        ("+hydra.sweeper.search={trainer.lr: 'tag(log, interval(1e-4, 1e-2))', lora.dropout: 'choice(0.0, 0.05, 2)'}",),
        "hydra.sweeper.search.lora.dropout: choice value 2: lora.dropout must be in [0, 1), got 2.0"),
    "second_key_lower_end": (  # the value the trial identity is composed with (the probe)
        ("+hydra.sweeper.search={trainer.lr: 'tag(log, interval(1e-4, 1e-2))', lora.dropout: 'interval(-0.5, 0.5)'}",),
        "hydra.sweeper.search.lora.dropout: interval lower end -0.5: lora.dropout must be in [0, 1), got -0.5"),
    "second_axis_value": (  # one ladder per value: the second ladder's is bad
        ("trainer.weight_decay=0.0,-1",),
        "trainer.weight_decay=-1: trainer.weight_decay must be in [0, inf), got -1.0"),
    # lora.r itself has no upper bound (a positive integer); a key that follows the rank does: the last rank
    # of 8, 16, ..., 2**32 makes data.seed leave numpy's seed range.
    "last_rank": (
        ("data.seed=${lora.r}", "hydra.sweeper.max_rank=4294967296"),
        "hydra.sweeper.max_rank: rank 4294967296: data.seed must be an integer in [0, 4294967295], got 4294967296"),
}


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(cwd: Path, cache: Path, args: tuple[str, ...], line: str, *extra: str) -> None:
    """Refused in one line: the command run in this process, through its entry point (the real script's one line
    is test_bad_input.py's), with the environment a child would get (helpers.run.env)."""
    proc = inprocess(cwd, "-m", *TINY, *extra, *args, cache=cache)
    assert one_line_error(proc, 2) == f"ranksweep: error: {line}"


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, rs_cache, case):
    args, line = CASES[case]
    extra = () if any(a.startswith("hydra.sweeper.max_rank=") for a in args) else ("hydra.sweeper.max_rank=32",)
    refused(tmp_path, rs_cache, args, line, *extra)
    assert not any(tmp_path.iterdir()), sorted(tmp_path.rglob("*"))  # no outputs/, storage, sweep folder


@pytest.fixture(scope="module")
def swept(tmp_path_factory, rs_cache) -> tuple[Path, str]:
    """A refused command, then the corrected one, in the same folder: the good sweep's folder and stdout."""
    cwd = tmp_path_factory.mktemp("preflight")
    bad = GOOD.replace("choice(0.0, 0.05)", "choice(0.0, 0.05, 1.0)")
    refused(cwd, rs_cache, (bad, *SMALL), "hydra.sweeper.search.lora.dropout: choice value 1.0: "
            "lora.dropout must be in [0, 1), got 1.0", "hydra.sweeper.study_name=pf")
    assert not any(cwd.iterdir())
    proc = inprocess(cwd, "-m", *TINY, "hydra.sweeper.study_name=pf", GOOD, *SMALL, cache=rs_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc.stdout


@pytest.mark.slow
def test_the_corrected_command_sweeps_after_a_refused_one(swept):
    cwd, stdout = swept
    assert "summary:" in stdout
    study = optuna.load_study(study_name="pf", storage=f"sqlite:///{cwd / 'outputs' / 'ranksweep.db'}")
    assert study.user_attrs["ranksweep_space"]["search"] == {
        "lora.dropout": "choice(0.0, 0.05)", "trainer.lr": "tag(log, interval(1e-4, 1e-2))"}
    search = [t for t in study.get_trials() if t.user_attrs.get("role") == "search"]
    assert {t.user_attrs["rank"] for t in search} == {8, 16} and all(
        1e-4 <= t.params["trainer.lr"] <= 1e-2 and t.params["lora.dropout"] in (0.0, 0.05) for t in search)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["middle_choice", "interval_upper_end", "second_axis_value"])
def test_a_bad_value_leaves_an_existing_study_untouched(swept, rs_cache, case):
    """Against the study of the good sweep: refused by the check (not as another search space), every file
    as it was."""
    cwd, _ = swept
    args, line = CASES[case]
    extra = () if any(a.startswith("hydra.sweeper.max_rank=") for a in args) else ("hydra.sweeper.max_rank=16",)
    before = fingerprint(cwd)
    refused(cwd, rs_cache, args, line, "hydra.sweeper.study_name=pf", *extra)
    assert fingerprint(cwd) == before



# -- check_plan itself, with a stand-in for the composition (no Hydra: milliseconds) --------------------


@pytest.fixture
def plan(monkeypatch):
    """``plan(search, reject, ladders, ranks)``: ``check_plan`` where a job fails when ``reject(combo, rank,
    values)`` gives a reason; returns the identities and the jobs composed, in order."""
    from ranksweep.errors import ConfigError
    from ranksweep.sweep import identity
    from ranksweep.sweep.preflight import check_plan
    from ranksweep.sweep.search import space

    monkeypatch.setattr(identity, "trial_identity", lambda run, searched: dict(run))

    def _plan(search, reject, ladders=(("default", ()),), ranks=(8, 16, 32)):
        calls = []

        def run_config(item, values):
            calls.append((item.combo, item.rank, dict(values)))
            why = reject(item.combo, item.rank, values)
            if why:
                raise ConfigError(why)
            return {"r": item.rank, **values}

        return check_plan(run_config, list(ladders), search, space(search, []), list(ranks)), calls

    return _plan


def test_values_are_checked_row_by_row_with_the_identity_at_the_probe(plan):
    idents, calls = plan({"a": "choice(1, 2, 3)", "b": "interval(0.5, 2.0)"}, lambda c, r, v: None)
    assert idents == {"default": {"r": 8, "a": 1, "b": 0.5}}  # the first choice, the low end, the first rank
    assert calls == [((), 8, {"a": 1, "b": 0.5}), ((), 32, {"a": 2, "b": 2.0}), ((), 8, {"a": 3, "b": 0.5})]


def test_values_bad_only_together_are_named_together(plan):
    from ranksweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.search: a=2 with b=2\.0 together: a\+b > 3$"):
        plan({"a": "choice(1, 2)", "b": "interval(0.5, 2.0)"},
             lambda c, r, v: "a+b > 3" if v["a"] + v["b"] > 3 else None, ranks=(8,))


def test_an_upper_end_optuna_never_proposes_may_fail(plan):
    """Optuna proposes floats in [low, high): a key that must stay below 1 takes interval(0, 1)."""
    from ranksweep.errors import ConfigError

    below_1 = lambda c, r, v: "d must be < 1" if v["d"] >= 1 else None  # noqa: E731
    _, calls = plan({"d": "interval(0, 1)"}, below_1)
    assert calls[-1] == ((), 32, {"d": 0.9999999999999999})
    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.search\.d: interval upper end 1\.5: d must be < 1$"):
        plan({"d": "interval(0, 1.5)"}, below_1)


def test_a_rank_bad_in_a_later_ladder_names_the_ladder(plan):
    from ranksweep.errors import ConfigError

    ladders = (("x=1", ("x=1",)), ("x=2", ("x=2",)))
    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.max_rank: rank 32 \(ladder x=2\): too big$"):
        plan({}, lambda c, r, v: "too big" if r == 32 and c == ("x=2",) else None, ladders=ladders)
