"""LoRA target sets named by role, resolved to each family's module names.

Roles: ``attention``, ``mlp``, ``all_linear``, ``qv``. A target string is a
role, or module names joined by ``+`` (``q_proj+v_proj``). Every resolved
name must exist in the model as a linear layer, else the error lists what
the model has.
"""

from __future__ import annotations

from torch import nn

from ranksweep.errors import ConfigError

_SPLIT_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_SPLIT_MLP = ("gate_proj", "up_proj", "down_proj")

# family -> role -> module names. Phi-3 fuses q/k/v into qkv_proj and
# gate/up into gate_up_proj, so its "qv" role adapts the fused projection.
FAMILY_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "phi3": {
        "attention": ("qkv_proj", "o_proj"),
        "mlp": ("gate_up_proj", "down_proj"),
        "qv": ("qkv_proj",),
    },
}
for _family in ("llama", "qwen2", "gemma2", "gemma3", "mistral"):
    FAMILY_MODULES[_family] = {"attention": _SPLIT_ATTN, "mlp": _SPLIT_MLP, "qv": ("q_proj", "v_proj")}
for _roles in FAMILY_MODULES.values():
    _roles["all_linear"] = _roles["attention"] + _roles["mlp"]

ROLES = ("attention", "mlp", "all_linear", "qv")


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the linear layers a LoRA can adapt.

    The output head is left out: peft's ``all-linear`` leaves it out too.
    """
    names: set[str] = set()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full, module in model.named_modules():
        if module is out:
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def role_modules(family: str, targets: str) -> tuple[str, ...]:
    """The module names a role or ``a+b`` list stands for, before checking the model."""
    targets = str(targets).strip()
    roles = FAMILY_MODULES.get(family)
    if roles is None:
        raise ConfigError(f"model.family: unknown family {family!r}; known: {', '.join(FAMILY_MODULES)}")
    if targets in roles:
        return roles[targets]
    return tuple(t.strip() for t in targets.split("+") if t.strip())


def resolve_targets(model: nn.Module, family: str, targets: str) -> list[str]:
    """Resolve ``lora.targets`` against a loaded model; error if a module is missing."""
    wanted = role_modules(family, targets)
    have = linear_module_names(model)
    missing = [m for m in wanted if m not in have]
    if missing and "+" not in str(targets) and str(targets).strip() not in FAMILY_MODULES[family]:
        raise ConfigError(
            f"lora.targets: {targets!r} is neither a role ({', '.join(ROLES)}) nor a linear module "
            f"of this {family} model; its linear modules are: {', '.join(have)}"
        )
    if missing:
        raise ConfigError(
            f"lora.targets: module(s) {', '.join(missing)} not in this {family} model; "
            f"its linear modules are: {', '.join(have)}"
        )
    return list(wanted)


def expected_lora_params(model: nn.Module, modules: list[str], r: int) -> int:
    """Sum over targeted linear layers of r * (in + out): LoRA_A is r x in, LoRA_B is out x r."""
    total = 0
    for full, module in model.named_modules():
        if full.rsplit(".", 1)[-1] in modules and hasattr(module, "in_features"):
            total += r * (module.in_features + module.out_features)
    return total
