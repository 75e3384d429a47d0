"""Every YAML in conf/ composes with Hydra and validates; the sweeper plugin is discoverable."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF, compose
from omegaconf import OmegaConf

from ranksweep.config import GROUPS, RunConfig, register_configs, to_run_config
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


def _group_yamls() -> list[tuple[str, str]]:
    """(group, option) for every YAML under conf/<group>/, conf/sweep (-> ../sweeps) included."""
    out = []
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for yaml in sorted(group_dir.glob("*.yaml")):
            out.append((group_dir.name, yaml.stem))
    return out


GROUP_YAMLS = _group_yamls()
SWEEP_DIR = CONF / "sweep"
SWEEPS = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")) if SWEEP_DIR.is_dir() else []


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


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, o in GROUP_YAMLS if g != "sweep"],
                         ids=lambda v: str(v))
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
    """conf/sweep -> ../sweeps: `# @package _global_` presets, used as +sweep=<name>."""
    if not SWEEPS:
        pytest.skip("no sweep presets in conf/sweep yet")
    for name in SWEEPS:
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


def test_schemas_registered_in_config_store():
    from hydra.core.config_store import ConfigNode, ConfigStore

    register_configs()

    def stored_types(tree) -> set[type]:
        out = set()
        for value in tree.values():
            if isinstance(value, ConfigNode):
                out.add(OmegaConf.get_type(value.node))
            elif isinstance(value, dict):
                out |= stored_types(value)
        return out

    repo = ConfigStore.instance().repo
    assert "run_schema.yaml" in repo
    types = stored_types(repo)
    assert RunConfig in types
    for group, schema in GROUPS.items():
        assert schema in types, f"{group}: {schema.__name__} not registered"
    assert "ranksweep.yaml" in repo["hydra"]["sweeper"]


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
                                     ("rslora", 16, None, 8.0, True)]:
        run = to_run_config(compose("model=tiny_llama", f"lora.r={r}", f"lora.alpha_rule={rule}",
                                    *( [f"lora.alpha={alpha}"] if alpha is not None else [])))
        assert run.lora.lora_alpha == want and run.lora.use_rslora is rs


def test_conf_sweep_points_at_sweeps():
    assert (CONF / "sweep").resolve() == (Path(CONF).parent / "sweeps").resolve()
