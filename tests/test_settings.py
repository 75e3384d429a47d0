"""hydra.sweeper.*: every setting defined, defaulted and validated in one place (SweepSettings)."""

from __future__ import annotations

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

    from ranksweep.sweep.sweeper import open_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    s = SweepSettings.from_params({"study_name": "sp", "storage": url})
    storage = optuna.storages.RDBStorage(url)

    def space(text: str) -> dict:
        return {"ladders": ["default"], "fixed": [], "search": {"trainer.lr": text}, "search_budget": 3}

    open_study(storage, s, space("tag(log, interval(1e-4, 1e-2))"), {})
    assert open_study(storage, s, space("tag(log,interval(1e-4,1e-2))"), {}).study_name == "sp"
    with pytest.raises(ConfigError, match=r"different search space \(differs in: search; stored "):
        open_study(storage, s, space("tag(log, interval(1e-4, 1e-3))"), {})
