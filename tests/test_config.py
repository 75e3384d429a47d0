"""Every YAML in conf/ and sweeps/ composes with Hydra and validates; the schema backs them;
the sweeper plugin is discoverable; users add config groups through Hydra's search path; the
presets of sweeps/ are the group `sweep`; pyproject.toml lists every package."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from helpers import CONF, REPO, SWEEPS, compose
from omegaconf import OmegaConf

from ranksweep.config import GROUPS, SCHEMA_NAME, RunConfig, TrainerConfig, register_configs, to_run_config
from ranksweep.errors import ConfigError

# Groups whose options need more than the option itself to validate.
NEEDS = {
    ("data", "csv"): ["data.path=x"],
    ("data", "jsonl"): ["data.path=x"],
    ("data", "parquet"): ["data.path=x"],
    ("data", "hub"): ["data.path=x"],
}
# Groups every option of which has a schema and a `name` equal to the file name.
NAMED_GROUPS = ("model", "quant", "data", "logger")


def _yamls() -> list[tuple[str, str]]:
    """(group, option) for every YAML under conf/ but config.yaml, and every preset in sweeps/ (the group
    ``sweep``): ``("model", "tiny_llama")``, ``("sweep", "rank_doubling")``, ``("hydra/launcher", "slurm_gpu")``."""
    tree = [(str(p.parent.relative_to(CONF)), p.stem) for p in CONF.rglob("*.yaml") if p.parent != CONF]
    return sorted(tree + [("sweep", p.stem) for p in SWEEPS.rglob("*.yaml")])


ALL_YAMLS = _yamls()
GROUP_YAMLS = [(g, o) for g, o in ALL_YAMLS if g in GROUPS]
SWEEP_DIR = SWEEPS
SWEEP_NAMES = [o for g, o in ALL_YAMLS if g == "sweep"]
LAUNCHERS = [o for g, o in ALL_YAMLS if g == "hydra/launcher"]


def test_every_yaml_is_tested():
    """Each YAML is a group option, a sweep preset or a launcher: one of the tests below composes it."""
    assert (CONF / "config.yaml").is_file()
    tested_elsewhere = ("sweep", "hydra/launcher", "hydra/help")
    other = [f"{g}/{o}.yaml" for g, o in ALL_YAMLS if g not in GROUPS and g not in tested_elsewhere]
    assert not other, f"YAMLs no test composes: {other}"
    assert SWEEP_NAMES and LAUNCHERS and GROUP_YAMLS


def test_configs_are_read_from_the_top_level_folders():
    """In a source checkout (the editable compat install: only src/ is importable, ranksweep.conf is not), Hydra
    reads the repo's conf/ as an absolute folder and the presets of sweeps/ through ranksweep-sweeps://."""
    from ranksweep.compose import conf_dir, config_path, sweeps_dir

    assert importlib.util.find_spec("ranksweep.conf") is None
    assert conf_dir() == CONF.resolve() and sweeps_dir() == SWEEPS.resolve()
    assert config_path() == str(CONF.resolve())
    cfg = compose(return_hydra_config=True)
    sources = [(s.schema, s.path, s.provider) for s in cfg.hydra.runtime.config_sources]
    assert ("file", str(CONF.resolve()), "main") in sources, sources
    assert ("ranksweep-sweeps", str(SWEEPS.resolve()), "ranksweep") in sources, sources


def test_installed_layout_is_found(tmp_path, monkeypatch):
    """In a wheel, conf/ and sweeps/ sit inside the package (<site-packages>/ranksweep/conf, .../sweeps)."""
    import ranksweep
    from ranksweep import compose as compose_module

    package = tmp_path / "site-packages" / "ranksweep"
    shutil.copytree(CONF, package / "conf")
    shutil.copytree(SWEEPS, package / "sweeps")
    monkeypatch.setattr(ranksweep, "__file__", str(package / "__init__.py"))
    assert compose_module.conf_dir() == package / "conf" and compose_module.sweeps_dir() == package / "sweeps"
    assert compose_module.is_ranksweep_tree(str(package / "conf"))
    assert compose_module.is_ranksweep_tree(f"file://{package / 'conf'}")
    assert compose_module.is_ranksweep_tree("pkg://ranksweep.conf")
    assert not compose_module.is_ranksweep_tree(str(tmp_path)) and not compose_module.is_ranksweep_tree("pkg://app")


def test_presets_are_top_level_and_nowhere_else():
    """sweeps/ holds one YAML per preset (a real folder); no config tree or preset is left under src/ or conf/."""
    assert SWEEP_DIR.is_dir() and not SWEEP_DIR.is_symlink() and CONF.is_dir() and not CONF.is_symlink()
    assert {"rank_doubling", "targets_x_rank", "bits_x_rank"} <= set(SWEEP_NAMES)
    assert not [p for p in SWEEPS.iterdir() if p.suffix != ".yaml" and p.name != "__pycache__"]
    assert not (CONF / "sweep").exists() and not (REPO / "src" / "ranksweep" / "conf").exists()
    assert not list((REPO / "src").rglob("*.yaml"))
    presets = {p.read_bytes() for p in SWEEPS.glob("*.yaml")}
    copies = [p for p in CONF.rglob("*.yaml") if p.read_bytes() in presets]
    assert not copies, copies


def test_pyproject_lists_every_package():
    """packages = [...] in pyproject.toml (package-dir maps conf/ and sweeps/ into the package, which rules out
    packages.find): every folder under src/ that holds Python modules is listed, and nothing else."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(d.relative_to(REPO / "src").parts) for d in (REPO / "src").rglob("*")
             if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    mapped = {"ranksweep.conf": "conf", "ranksweep.sweeps": "sweeps"}
    assert found - listed == set(), f"packages under src/ missing from pyproject.toml's packages: {found - listed}"
    assert listed - found == set(mapped), f"listed packages that are not under src/: {listed - found - set(mapped)}"
    assert setuptools["package-dir"] == {"": "src", **mapped}
    data = setuptools["package-data"]
    assert "*.yaml" in data["ranksweep.sweeps"] and "**/*.yaml" in data["ranksweep.conf"]


def test_conf_tree_has_every_group():
    groups = {g for g, _ in GROUP_YAMLS}
    assert set(GROUPS) <= groups, f"missing config groups: {set(GROUPS) - groups}"
    # Every tiny family has its model option.
    models = {o for g, o in GROUP_YAMLS if g == "model"}
    assert {f"tiny_{f}" for f in ("llama", "qwen2", "phi3", "gemma2", "gemma3", "mistral")} <= models


def test_primary_config_composes_and_validates():
    cfg = compose()
    run = to_run_config(cfg)
    assert isinstance(run, RunConfig)
    assert run.model.name == "smollm2_135m_instruct"
    assert run.quant.bits == 4 and run.lora.r == 8 and run.lora.lora_alpha == 16.0
    assert run.objective == "eval_loss"


@pytest.mark.parametrize(("group", "option"), GROUP_YAMLS, ids=lambda v: str(v))
def test_group_option_composes_and_validates(group, option):
    cfg = compose(f"{group}={option}", *NEEDS.get((group, option), []))
    run = to_run_config(cfg)
    node = getattr(run, group)
    if group in NAMED_GROUPS:
        assert node.name == option, f"conf/{group}/{option}.yaml has name {node.name!r}"
    # The YAML sets nothing the schema does not know (OmegaConf would have refused), and
    # every value in the file is what the run config holds.
    raw = OmegaConf.load(CONF / group / f"{option}.yaml")
    for key, value in OmegaConf.to_container(raw, resolve=False).items():
        if key == "defaults" or value == "???":  # ??? = set on the command line (data.path)
            continue
        got = getattr(node, key)
        assert got == value, f"{group}.{key}: yaml {value!r}, run config {got!r}"


@pytest.mark.parametrize("option", ["csv", "jsonl", "parquet", "hub"])
def test_data_path_is_required(option):
    cfg = compose(f"data={option}")
    with pytest.raises(ConfigError, match=r"data\.path"):
        to_run_config(cfg)


def test_sweep_presets_compose_and_validate():
    """sweeps/: `# @package _global_` presets, used as +sweep=<name>."""
    for name in SWEEP_NAMES:
        text = (SWEEP_DIR / f"{name}.yaml").read_text()
        assert "# @package _global_" in text, f"sweep/{name}.yaml is not a _global_ package"
        cfg = compose(f"+sweep={name}", return_hydra_config=True)
        to_run_config(cfg)
        sweeper = cfg.hydra.sweeper
        assert str(sweeper._target_).endswith("RanksweepSweeper"), name
        # Every value a preset sweeps over is itself a valid override.
        for key, values in (sweeper.get("params") or {}).items():
            for value in str(values).split(","):
                to_run_config(compose(f"+sweep={name}", f"{key}={value.strip()}"))


def test_schema_backs_the_primary_config():
    """config.yaml composes the RunConfig schema first: the composed config and its groups are typed."""
    from hydra.core.config_store import ConfigStore

    register_configs()
    repo = ConfigStore.instance().repo
    assert OmegaConf.get_type(repo[f"{SCHEMA_NAME}.yaml"].node) is RunConfig
    assert OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))["defaults"][0] == SCHEMA_NAME
    assert "ranksweep.yaml" in repo["hydra"]["sweeper"]
    cfg = compose("trainer=gpu")
    assert OmegaConf.get_type(cfg) is RunConfig
    for group, schema in GROUPS.items():
        assert OmegaConf.get_type(cfg[group]) is schema, group


def test_schema_is_not_a_config_group():
    """Hydra lists exactly the folders of conf/ as groups, plus `sweep` (sweeps/) and its own hydra/: no schema
    group."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = set(loader.list_groups(""))
        presets = loader.get_group_options("sweep")
    folders = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert groups == folders | {"sweep"}, groups ^ (folders | {"sweep"})
    assert presets == sorted(SWEEP_NAMES)


def test_sweeps_source_serves_only_the_sweep_group():
    """The config source behind +sweep=NAME: its root holds the group `sweep`, whose options are sweeps/*.yaml."""
    from hydra.core.object_type import ObjectType
    from hydra.plugins.config_source import ConfigLoadError

    from hydra_plugins.ranksweep_sweeper.sweeps_source import SweepsConfigSource

    source = SweepsConfigSource("ranksweep", f"ranksweep-sweeps://{SWEEPS}")
    assert source.available() and source.path == str(SWEEPS)
    assert SweepsConfigSource("ranksweep", "ranksweep-sweeps://").path == str(SWEEPS.resolve())
    assert source.list("", None) == ["sweep"] and source.list("", ObjectType.CONFIG) == []
    assert source.list("sweep", ObjectType.CONFIG) == sorted(SWEEP_NAMES) and source.list("sweep", None)
    assert source.list("sweep", ObjectType.GROUP) == [] and source.list("model", None) == []
    assert source.is_group("") and source.is_group("sweep") and not source.is_group("model")
    assert source.is_config("sweep/rank_doubling") and source.is_config("sweep/rank_doubling.yaml")
    # Paths without the group's name, as its folder holds them, are not configs of this source.
    assert not source.is_config("rank_doubling") and not source.is_config("config") and not source.is_config("sweep")
    loaded = source.load_config("sweep/rank_doubling")
    assert loaded.header["package"] == "_global_" and loaded.config.hydra.sweeper.study_name == "rank_doubling"
    for missing in ("rank_doubling", "sweep/nope", "sweep"):
        with pytest.raises(ConfigLoadError):
            source.load_config(missing)
    assert not SweepsConfigSource("x", "ranksweep-sweeps:///nonexistent").list("", None)


def test_other_hydra_apps_get_no_sweep_group(tmp_path):
    """The presets join the search path only where the primary config is ranksweep's."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    app = tmp_path / "app"
    (app / "db").mkdir(parents=True)
    (app / "config.yaml").write_text("defaults:\n  - db: a\n  - _self_\nx: 1\n")
    (app / "db" / "a.yaml").write_text("host: a\n")
    with initialize_config_dir(config_dir=str(app), version_base="1.3"):
        hydra = GlobalHydra.instance()
        assert set(hydra.config_loader().list_groups("")) == {"db", "hydra"}
        paths = [e.path for e in hydra.config_loader().get_search_path().get_path()]
        assert not [p for p in paths if "ranksweep" in p], paths
        cfg = hydra_compose("config", return_hydra_config=True)
        assert "ranksweep-sweeps" not in {s.schema for s in cfg.hydra.runtime.config_sources}
        # No group `sweep` there: Hydra reads +sweep=rank_doubling as a plain new key, not a preset.
        cfg = hydra_compose("config", overrides=["+sweep=rank_doubling"], return_hydra_config=True)
        assert cfg.sweep == "rank_doubling" and "sweep" not in cfg.hydra.runtime.choices
        assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")


def test_a_user_sweep_group_beside_the_presets(tmp_path):
    """A user's own sweep/ folder (hydra.searchpath, --config-dir) adds presets beside ranksweep's."""
    conf = tmp_path / "my_conf"
    (conf / "sweep").mkdir(parents=True)
    (conf / "sweep" / "mine.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    study_name: mine\n    max_rank: 32\n")
    path = f"hydra.searchpath=[file://{conf}]"
    cfg = compose(path, "+sweep=mine", return_hydra_config=True)
    assert (cfg.hydra.sweeper.study_name, cfg.hydra.sweeper.max_rank) == ("mine", 32)
    cfg = compose(path, "+sweep=rank_doubling", return_hydra_config=True)
    assert cfg.hydra.sweeper.study_name == "rank_doubling"
    with pytest.raises(ConfigError) as info:
        compose(path, "+sweep=nope")
    assert "mine" in str(info.value) and "rank_doubling" in str(info.value), str(info.value)


def test_trainer_presets_extend_default():
    """trainer/gpu and trainer/tiny name trainer/default in their defaults list and list only what differs."""
    default = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "default.yaml"))
    assert set(default) == set(TrainerConfig.__dataclass_fields__), "default.yaml lists every trainer key"
    for option in ("gpu", "tiny"):
        raw = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / f"{option}.yaml"))
        assert raw.pop("defaults") == ["default", "_self_"], option
        same = [k for k, v in raw.items() if default.get(k) == v]
        assert not same, f"trainer/{option}.yaml repeats default.yaml's {same}"
        composed = OmegaConf.to_container(compose(f"trainer={option}").trainer)
        assert composed == {**default, **raw}, option


def test_sweeper_plugin_is_discoverable():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [cls.__name__ for cls in Plugins.instance().discover(Sweeper)]
    assert "RanksweepSweeper" in names, names
    cfg = compose("hydra/sweeper=ranksweep", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.ranksweep_sweeper.ranksweep_sweeper.RanksweepSweeper"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.r=-4", "lora.r"),
        ("lora.r=0", "lora.r"),
        ("quant.bits=3", "quant.bits"),
        ("model.family=gpt5", "model.family"),
        ("trainer.max_seq_len=0", "trainer.max_seq_len"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("objective=accuracy", "objective"),
        ("trainer.lr=-1", "trainer.lr"),
        ("trainer.gradient_checkpointing=sometimes", "trainer.gradient_checkpointing"),
        ("trainer.loss_impl=fused", "trainer.loss_impl"),
        ("trainer.ce_chunk=0", "trainer.ce_chunk"),
        ("trainer.kernels=unsloth", "trainer.kernels"),
        ("trainer.optim=lion", "trainer.optim"),
        ("trainer.memory_limit_gb=-2", "trainer.memory_limit_gb"),
    ],
)
def test_bad_values_name_their_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_cfg(override))
    assert str(info.value).startswith(key), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["lora.r=abc", "lora.r=2.5", "trainer.max_steps=many", "lora.alpha=big",
                                      "trainer.packing=maybe", "trainer.memory_limit_gb=lots"])
def test_type_errors_name_their_key(compose_cfg, override):
    """A value of the wrong type is refused by the structured schema, naming the key, on one line."""
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_cfg(override))
    key, value = override.split("=")
    assert str(info.value).startswith(f"{key}: "), str(info.value)
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


def test_alpha_rules():
    for rule, r, alpha, want, rs in [("two_r", 16, None, 32.0, False), ("fixed", 16, 8.0, 8.0, False),
                                     ("rslora", 16, None, 16.0, True), ("fixed", 16, None, 16.0, False)]:
        run = to_run_config(compose("model=tiny_llama", f"lora.r={r}", f"lora.alpha_rule={rule}",
                                    *( [f"lora.alpha={alpha}"] if alpha is not None else [])))
        assert run.lora.lora_alpha == want and run.lora.use_rslora is rs


def _scale(rule: str, r: int) -> float:
    return to_run_config(compose("model=tiny_llama", f"lora.r={r}", f"lora.alpha_rule={rule}")).lora.scale


def test_alpha_rules_mean_what_they_say():
    """rslora: alpha/sqrt(r), so r=32's scale is half r=8's; fixed: alpha/r (a quarter); two_r: always 2."""
    assert _scale("rslora", 8) == pytest.approx(2 * _scale("rslora", 32))
    assert _scale("rslora", 8) == pytest.approx(16 / 8 ** 0.5)
    assert _scale("fixed", 8) == pytest.approx(4 * _scale("fixed", 32)) == pytest.approx(2.0)
    assert _scale("two_r", 8) == _scale("two_r", 32) == 2.0
    assert _scale("rslora", 32) != _scale("two_r", 32)
    with pytest.raises(ConfigError, match="lora.alpha must be set when lora.alpha_rule=rslora"):
        to_run_config(compose("model=tiny_llama", "lora.alpha_rule=rslora", "lora.alpha=null"))


def test_launcher_presets_compose():
    """conf/hydra/launcher/*.yaml: each composes as hydra/launcher=<name> and its values arrive."""
    for name in LAUNCHERS:
        cfg = compose(f"hydra/launcher={name}", return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert "_target_" in launcher, name
        raw = OmegaConf.to_container(OmegaConf.load(CONF / "hydra" / "launcher" / f"{name}.yaml"))
        for key, value in raw.items():
            if key != "defaults":
                assert OmegaConf.to_container(launcher, resolve=False)[key] == value, (name, key)
        to_run_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.r=abc"], "lora.r: 'abc' is not an integer"),
        (["lora.r=2.5"], "lora.r: '2.5' is not an integer"),
        (["lora.alpha=big"], "lora.alpha: 'big' is not a number"),
        (["trainer.packing=maybe"], "trainer.packing: 'maybe' is not a boolean"),
        (["lora.rank=8"], "lora.rank: unknown config key"),
        (["model.id=null"], "model.id: must not be null"),
        (["model=nope"], "In 'config': Could not find 'model/nope'"),
    ],
)
def test_composition_type_checks(overrides, message):
    """The structured primary config refuses bad types and keys while composing, in one line."""
    with pytest.raises(ConfigError) as info:
        compose(*overrides)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value) and "search path" not in str(info.value)


def test_added_keys_fail_validation():
    """`+key=value` adds a key even to a typed node: to_run_config names it."""
    for override, key in (("+lr=1", "lr"), ("+lora.foo=1", "lora.foo"), ("+trial.x.y=1", "trial.x")):
        with pytest.raises(ConfigError, match=rf"^unknown config key\(s\): {key}( \(did you mean [a-z_.]+\?\))?$"):
            to_run_config(compose(override))


def _my_conf(root: Path) -> Path:
    """A user's config folder: model/my_tiny.yaml (tiny_llama's values), lora/wide.yaml, model/broken.yaml."""
    conf = root / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "lora").mkdir()
    text = (CONF / "model" / "tiny_llama.yaml").read_text().replace("name: tiny_llama", "name: my_tiny")
    (conf / "model" / "my_tiny.yaml").write_text(text)
    (conf / "lora" / "wide.yaml").write_text("defaults:\n  - default\n  - _self_\n\nr: 64\ntargets: attention\n")
    (conf / "model" / "broken.yaml").write_text("name: broken\nid: tiny:llama\nfamily: llama\nparams_b: lots\n")
    return conf


def test_user_config_group_on_the_search_path(tmp_path):
    conf = _my_conf(tmp_path)
    run = to_run_config(compose(f"hydra.searchpath=[file://{conf}]", "model=my_tiny", "lora=wide"))
    assert (run.model.name, run.model.id, run.model.family, run.model.params_b) == ("my_tiny", "tiny:llama",
                                                                                  "llama", 0.0004)
    # A user's option can extend a packaged one of the same group.
    assert (run.lora.r, run.lora.targets, run.lora.alpha_rule) == (64, "attention", "fixed")
    # The packaged options are still there beside the user's.
    assert to_run_config(compose(f"hydra.searchpath=[file://{conf}]", "model=tiny_qwen2")).model.family == "qwen2"
    # The schema checks the user's files too, naming the key and the file.
    with pytest.raises(ConfigError) as info:
        compose(f"hydra.searchpath=[file://{conf}]", "model=broken")
    assert str(info.value) == "model.params_b: 'lots' is not a number (in model/broken)"


def test_ranksweep_conf_replaces_the_tree(tmp_path, monkeypatch):
    """RANKSWEEP_CONF: a folder with a full config tree instead of the packaged one."""
    from ranksweep.compose import config_path

    mine = tmp_path / "conf"
    shutil.copytree(CONF, mine, ignore=shutil.ignore_patterns("__pycache__"))
    (mine / "lora" / "default.yaml").write_text((CONF / "lora" / "default.yaml").read_text().replace("r: 8", "r: 4"))
    monkeypatch.setenv("RANKSWEEP_CONF", str(mine))
    assert config_path() == str(mine.resolve())
    assert to_run_config(compose()).lora.r == 4
    # ranksweep's presets stay available beside the user's tree; a sweep/ group of the tree's own comes first.
    assert compose("+sweep=rank_doubling", return_hydra_config=True).hydra.sweeper.max_rank == 512
    (mine / "sweep").mkdir()
    (mine / "sweep" / "rank_doubling.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    study_name: my_ladder\n    max_rank: 64\n")
    cfg = compose("+sweep=rank_doubling", return_hydra_config=True)
    assert (cfg.hydra.sweeper.study_name, cfg.hydra.sweeper.max_rank) == ("my_ladder", 64)
    assert compose("+sweep=bits_x_rank", return_hydra_config=True).hydra.sweeper.study_name == "bits_x_rank"


@pytest.mark.parametrize("override, targets", [
    ("lora.targets=[q_proj,v_proj]", "q_proj+v_proj"),  # Hydra's list syntax, as axolotl lists them
    ("lora.targets=[attention]", "attention"),
    ("lora.targets=q_proj+v_proj", "q_proj+v_proj"),
])
def test_targets_as_a_list_or_joined(override, targets):
    assert to_run_config(compose(override)).lora.targets == targets


@pytest.mark.parametrize("override, message", [
    ("lora.targets=[]", "lora.targets must not be empty"),
    ("lora.targets=5", "lora.targets must be a role or module names, got 5"),
    ("lora.targets=[q_proj,[v]]", "lora.targets: a list takes module names or one role"),
    ("lora.targets=[q_proj+k_proj,v_proj]", "lora.targets: a list takes module names or one role"),
])
def test_bad_targets_list(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[")):
        to_run_config(compose(override))


@pytest.mark.parametrize("override, hint", [
    ("trainer.learning_rate=1e-4", "trainer.learning_rate: unknown config key (did you mean trainer.lr?)"),
    ("trainer.gradient_accumulation_steps=4", "(did you mean trainer.grad_accum?)"),
    ("lora.lora_alpha=32", "(did you mean lora.alpha?)"),
    ("lora.target_modules=[q_proj]", "(did you mean lora.targets?)"),
    ("trainer.warmup_ration=0.1", "(did you mean trainer.warmup_ratio?)"),
    ("trainer.eval_size=3", "(did you mean data.eval_size?)"),
    ("+lr=1", "unknown config key(s): lr (did you mean trainer.lr?)"),
])
def test_unknown_keys_suggest_ours(override, hint):
    """Other tools' names (TrainingArguments, peft, axolotl) and typos point at ranksweep's key."""
    with pytest.raises(ConfigError) as err:
        to_run_config(compose(override))
    assert hint in str(err.value)


def test_an_unknown_key_with_nothing_close_has_no_guess():
    with pytest.raises(ConfigError) as err:
        to_run_config(compose("trainer.foo=1"))
    assert str(err.value) == "trainer.foo: unknown config key"
