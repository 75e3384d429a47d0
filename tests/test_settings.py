"""hydra.sweeper.*: every setting defined, defaulted and validated in one place (SweepSettings)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields, replace

import pytest
from helpers import compose

from hydra_plugins.ranksweep_sweeper.config import RanksweepSweeperConf
from ranksweep.errors import ConfigError
from ranksweep.sweep.settings import SweepSettings


def test_plugin_config_is_the_settings():
    assert issubclass(RanksweepSweeperConf, SweepSettings)
    plugin = RanksweepSweeperConf()
    for name, value in vars(SweepSettings()).items():
        assert getattr(plugin, name) == value, name


@pytest.mark.parametrize("start, factor, max_rank, expected", [
    (8, 2, 256, [8, 16, 32, 64, 128, 256]), (8, 2, 200, [8, 16, 32, 64, 128]), (8, 2, 8, [8]),
    (1, 2, 16, [1, 2, 4, 8, 16]), (4, 4, 256, [4, 16, 64, 256]), (3, 3, 100, [3, 9, 27, 81]),
])
def test_ranks(start, factor, max_rank, expected):
    assert SweepSettings(start_rank=start, factor=factor, max_rank=max_rank).ranks == expected


@pytest.mark.parametrize("field, value, message", [
    ("start_rank", 0, "hydra.sweeper.start_rank must be a positive integer, got 0"),
    ("start_rank", -8, "hydra.sweeper.start_rank must be a positive integer, got -8"),
    ("start_rank", True, "hydra.sweeper.start_rank must be a positive integer, got True"),
    ("factor", 1, "hydra.sweeper.factor must be an integer >= 2, got 1"),
    ("factor", 2.0, "hydra.sweeper.factor must be an integer >= 2, got 2.0"),
    ("max_rank", 4, "hydra.sweeper.max_rank must be >= hydra.sweeper.start_rank (8), got 4"),
    ("min_gain", -0.1, "hydra.sweeper.min_gain must be in [0, 1), got -0.1"),
    ("min_gain", 1.5, "hydra.sweeper.min_gain must be in [0, 1), got 1.5"),
    ("min_gain", float("nan"), "hydra.sweeper.min_gain must be in [0, 1), got nan"),
    ("patience", 0, "hydra.sweeper.patience must be a positive integer, got 0"),
    ("seeds_per_rank", 0, "hydra.sweeper.seeds_per_rank must be a positive integer, got 0"),
    ("tolerance", 1.5, "hydra.sweeper.tolerance must be in [0, 1), got 1.5"),
    ("objective", "bleu", "hydra.sweeper.objective must be eval_loss, perplexity or exact_match, got 'bleu'"),
    ("direction", "maximize", "hydra.sweeper.direction must be minimize for objective=eval_loss, got maximize"),
    ("max_failure_rate", 2.0, "hydra.sweeper.max_failure_rate must be in [0, 1], got 2.0"),
    ("pruner", "median", "hydra.sweeper.pruner must be parent or none, got 'median'"),
    ("prune_after", 1.5, "hydra.sweeper.prune_after must be in [0, 1], got 1.5"),
    ("n_jobs", 0, "hydra.sweeper.n_jobs must be a positive integer, got 0"),
    ("parallel", 0, "hydra.sweeper.parallel must be a positive integer, got 0"),
    ("grace_period", 5, "hydra.sweeper.grace_period must be an integer above heartbeat_interval (10), got 5"),
    ("study_name", " ", "hydra.sweeper.study_name must not be empty"),
])
def test_bad_setting_names_its_key(field, value, message):
    with pytest.raises(ConfigError) as exc:
        SweepSettings(**{field: value}).validate()
    assert str(exc.value) == message


@pytest.mark.parametrize("objective, direction", [("eval_loss", "minimize"), ("perplexity", "minimize"),
                                                  ("exact_match", "maximize")])
def test_the_direction_is_the_objectives(objective, direction):
    """Derived from the objective; a given one (older commands and configs) is accepted when it agrees."""
    from ranksweep.objectives import OBJECTIVES

    assert OBJECTIVES[objective].direction == direction
    assert SweepSettings.from_params({"objective": objective}).direction == direction
    assert SweepSettings.from_params({"objective": objective, "direction": direction}).direction == direction
    assert SweepSettings.from_params({"objective": objective, "direction": None}).direction == direction
    other = "maximize" if direction == "minimize" else "minimize"
    with pytest.raises(ConfigError) as exc:
        SweepSettings.from_params({"objective": objective, "direction": other})
    assert str(exc.value) == f"hydra.sweeper.direction must be {direction} for objective={objective}, got {other}"
    with pytest.raises(ConfigError, match="hydra.sweeper.direction must be minimize or maximize, got 'up'"):
        SweepSettings.from_params({"objective": objective, "direction": "up"})


def test_from_params_drops_hydra_keys_and_refuses_unknown_ones():
    s = SweepSettings.from_params({"_target_": "x", "study_name": "a", "params": {"lora.targets": "qv,mlp"}})
    assert s.study_name == "a" and s.params == {"lora.targets": "qv,mlp"}
    with pytest.raises(ConfigError, match="hydra.sweeper.min_gian"):
        SweepSettings.from_params({"min_gian": 0.1})


def test_every_setting_carries_its_check_beside_its_default():
    """A setting added without a check is caught here; the cross-key ones are checked in validate()."""
    from dataclasses import fields

    free = {"storage", "search", "params"}  # any URL / any sweep strings (checked where they are parsed)
    cross = {"max_rank", "grace_period"}  # relative to another field
    unchecked = {f.name for f in fields(SweepSettings) if "check" not in f.metadata}
    assert unchecked == free | cross
    for name in cross:
        with pytest.raises(ConfigError, match=f"^hydra.sweeper.{name} must be"):
            SweepSettings(**{name: -1}).validate()


@pytest.mark.parametrize("field, value, message", [
    ("margin", float("inf"), "hydra.sweeper.margin must be a finite number >= 0, got inf"),
    ("confidence", 1.0, "hydra.sweeper.confidence must be in [0.5, 1), got 1.0"),
    ("bootstrap", 10, "hydra.sweeper.bootstrap must be an integer >= 100, got 10"),
    ("poll_s", 0, "hydra.sweeper.poll_s must be a positive number, got 0"),
    ("sampler", "cmaes", "hydra.sweeper.sampler must be tpe or random, got 'cmaes'"),
    ("stop_rule", True, "hydra.sweeper.stop_rule must be margin or share, got True"),
])
def test_more_bad_settings(field, value, message):
    with pytest.raises(ConfigError) as exc:
        SweepSettings(**{field: value}).validate()
    assert str(exc.value) == message


@pytest.mark.parametrize("key, hint", [
    ("max_ranks", " (did you mean hydra.sweeper.max_rank?)"),  # a typo
    ("grace", " (did you mean hydra.sweeper.grace_period?)"),  # the start of a name
    ("n_trials", " (did you mean hydra.sweeper.search_budget?)"),  # hydra-optuna-sweeper's name
    ("xyzzy", ""),  # nothing close: no guess
])
def test_unknown_sweeper_settings_suggest_ours(key, hint):
    with pytest.raises(ConfigError) as added:  # +hydra.sweeper.KEY=... reaches the plugin
        SweepSettings.from_params({key: 1})
    assert str(added.value) == f"hydra.sweeper.{key}: not a ranksweep sweeper setting{hint}"
    with pytest.raises(ConfigError) as typed:  # hydra.sweeper.KEY=... stops where Hydra composes
        compose(f"hydra.sweeper.{key}=1", return_hydra_config=True)
    assert str(typed.value) == f"hydra.sweeper.{key}: unknown config key{hint}"


def test_sweeper_dict_items_are_gathered_for_hydra():
    from ranksweep.compose import sweeper_dict_items

    line = ["-m", "hydra.sweeper.search.trainer.lr=tag(log, interval(1e-4, 1e-2))", "lora.r=8",
            "hydra.sweeper.search.lora.dropout='choice(0.0, 0.05)'", "hydra.sweeper.params.lora.targets=qv,attention"]
    assert sweeper_dict_items(line) == [
        "-m", "+hydra.sweeper.search={trainer.lr: 'tag(log, interval(1e-4, 1e-2))', lora.dropout: 'choice(0.0, 0.05)'}",
        "lora.r=8", "+hydra.sweeper.params={lora.targets: 'qv,attention'}"]
    assert sweeper_dict_items(["a=1", "hydra.sweeper.max_rank=64"]) == ["a=1", "hydra.sweeper.max_rank=64"]
    # Composed with a preset that searches trainer.lr: the items merge into its search, the last wins.
    cfg = compose("+sweep=rank_doubling", *sweeper_dict_items(["hydra.sweeper.search.lora.dropout=choice(0.0,0.1)",
                                                               "hydra.sweeper.search.trainer.lr=interval(1e-3,1e-2)"]),
                  return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.search) == {"trainer.lr": "interval(1e-3,1e-2)", "lora.dropout": "choice(0.0,0.1)"}


def test_a_range_on_the_command_line_is_searched_and_a_list_is_a_ladder():
    from ranksweep.sweep.overrides import parse

    space = parse(["trainer.lr=tag(log, interval(1e-4, 1e-2))", "lora.targets=qv,attention", "trainer.max_steps=5"],
                  {"lora.dropout": "interval(0.0, 0.1)", "lora.targets": "all_linear,mlp"})
    assert dict(space.search) == {"trainer.lr": "tag(log, interval(1e-4, 1e-2))", "lora.dropout": "interval(0.0, 0.1)"}
    assert [k for k, _ in space.ladders] == ["lora.targets=qv", "lora.targets=attention"]  # the command line wins
    assert space.fixed == ("trainer.max_steps=5",) and "trainer.lr" not in space.keys


def test_a_search_spelled_with_other_spaces_resumes_and_another_is_refused(tmp_path):
    """The stored search space compares as Hydra reads it: spaces outside quotes do not count."""
    import optuna

    from ranksweep.sweep.sweeper import create_or_resume_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    s = SweepSettings.from_params({"study_name": "sp", "storage": url})
    storage = optuna.storages.RDBStorage(url)

    def space(text: str) -> dict:
        return {"ladders": ["default"], "fixed": [], "search": {"trainer.lr": text}, "search_budget": 3}

    create_or_resume_study(storage, s, space("tag(log, interval(1e-4, 1e-2))"), {})
    assert create_or_resume_study(storage, s, space("tag(log,interval(1e-4,1e-2))"), {}).study_name == "sp"
    with pytest.raises(ConfigError, match=r"different search space \(differs in: search; stored "):
        create_or_resume_study(storage, s, space("tag(log, interval(1e-4, 1e-3))"), {})


# ----------------------------------------------------------------------------- the saved record

PASSWORD = "s3cr3t-pw"
URL = f"postgresql://me:{PASSWORD}@db.example/sweeps"


def _set_apart() -> SweepSettings:
    """Settings with every field away from its default: a record that drops one shows."""
    s = SweepSettings.from_params({
        "study_name": "rec", "storage": URL, "start_rank": 4, "factor": 4, "max_rank": 64, "stop_rule": "share",
        "margin": 0.01, "margin_type": "absolute", "confidence": 0.9, "bootstrap": 500, "patience": 3,
        "seeds_per_rank": 2, "min_gain": 0.1, "tolerance": 0.02, "search": {"trainer.lr": "interval(1e-4, 1e-2)"},
        "search_budget": 3, "sampler": "random", "rung_pruner": "none", "direction": "maximize",
        "objective": "exact_match", "max_failure_rate": 0.25, "pruner": "none", "prune_after": 0.5,
        "prune_margin": 0.2, "n_jobs": 2, "parallel": 2, "params": {"lora.targets": "qv,attention"},
        "heartbeat_interval": 5, "grace_period": 20, "poll_s": 1.0, "noise_seeds": 3, "budget_check": 2.0,
        "resolve_seeds": 1, "prescreen": "nested", "confirm_budget": 2})
    defaults = SweepSettings()
    assert all(getattr(s, f.name) != getattr(defaults, f.name) for f in fields(SweepSettings))
    return s


def test_the_record_holds_every_setting_with_the_storage_masked():
    s = _set_apart()
    rec = s.to_record()
    assert set(rec) == {f.name for f in fields(SweepSettings)} | {"ranks"}
    assert rec["ranks"] == [4, 16, 64] and rec["storage"] == "postgresql://me:***@db.example/sweeps"
    assert PASSWORD not in json.dumps(rec)
    assert {k: v for k, v in rec.items() if k not in ("storage", "ranks")} == {
        f.name: getattr(s, f.name) for f in fields(SweepSettings) if f.name != "storage"}
    back = SweepSettings.from_record(json.loads(json.dumps(rec)))  # as a JSON file or a study attribute
    assert back == replace(s, storage="postgresql://me:***@db.example/sweeps")


def test_a_record_with_unknown_and_missing_keys_reads():
    s = SweepSettings.from_record({"patience": 5, "some_future_key": 1, "ranks": [8, 16, 32]})
    assert s.patience == 5 and s.ranks == [8, 16, 32] and s.margin == SweepSettings().margin
    # A record without noise_seeds, budget_check or resolve_seeds was written before they existed: its sweep ran
    # none of them.
    before = dataclasses.replace(SweepSettings(), noise_seeds=0, budget_check=0, resolve_seeds=0)
    assert SweepSettings.from_record(None) == before == SweepSettings.from_record({})
    assert SweepSettings.from_record({"noise_seeds": 2, "budget_check": 3.0, "resolve_seeds": 2}) == SweepSettings()


def test_older_records_read_with_the_studys_space():
    """Before the settings were saved whole, the study attribute held the stop rule and the ladder's
    ranks, the summary's ``sweep`` block a few keys, and ``ranksweep_space`` the rest."""
    attr = {"ranks": [4, 8, 16], "max_rank": 20, "min_gain": 0.1, "patience": 3, "tolerance": 0.02,
            "direction": "minimize", "stop_rule": "share", "margin": 0.01, "margin_type": "absolute",
            "confidence": 0.9, "bootstrap": 500}
    space = {"ladders": ["default"], "fixed": [], "start_rank": 4, "factor": 2, "seeds_per_rank": 2,
             "objective": "perplexity", "search": {"trainer.lr": "interval(1e-4, 1e-2)"}, "search_budget": 3}
    s = SweepSettings.from_record(attr, space)
    assert (s.start_rank, s.factor, s.max_rank, s.seeds_per_rank, s.objective, s.budget) == (4, 2, 20, 2,
                                                                                            "perplexity", 3)
    assert (s.stop_rule, s.margin, s.margin_type, s.confidence, s.bootstrap, s.min_gain) == (
        "share", 0.01, "absolute", 0.9, 500, 0.1)
    block = {"study_name": "old", "storage": "sqlite:///outputs/ranksweep.db", "ranks": [8, 16, 32, 64],
             "min_gain": 0.05, "patience": 2, "seeds_per_rank": 1, "tolerance": 0.05, "objective": "eval_loss",
             "direction": "minimize"}
    s = SweepSettings.from_record(block)  # the summary's block alone: the ladder from its ranks
    assert (s.study_name, s.ranks, s.budget) == ("old", [8, 16, 32, 64], 1)


def test_the_study_the_summary_and_wandb_record_the_same_settings(tmp_path, monkeypatch):
    import optuna
    import wandb

    from ranksweep import tracking
    from ranksweep.sweep.reader import spec_of, spec_of_study
    from ranksweep.sweep.summary import sweep_meta
    from ranksweep.sweep.sweeper import create_or_resume_study

    s = _set_apart()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'rec.db'}")
    study = create_or_resume_study(storage, s, {"ladders": ["default"], "start_rank": 4}, {})
    got: dict = {}

    def init(**kwargs):
        got.update(kwargs["config"])
        raise wandb.errors.UsageError("enough")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(ConfigError):
        tracking.log_sweep_summary({"name": "wandb", "enabled": True, "mode": "offline", "tags": []}, [], s,
                                   tmp_path, tmp_path / "rank_curve.png")
    record = s.to_record()
    assert study.user_attrs["ranksweep_settings"] == record
    assert sweep_meta(s) == record
    assert got == {**record, "ladders": []}
    assert PASSWORD not in json.dumps([study.user_attrs, sweep_meta(s), got])
    # Read back, the study gives the same reading rules as the settings it ran with.
    assert spec_of_study(study) == spec_of(s, [("default", ())])
