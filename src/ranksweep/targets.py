"""LoRA target sets named by role, resolved to each family's module names.

Roles: ``attention``, ``mlp``, ``all_linear``, ``qv``. A target string is a
role, or module names joined by ``+`` (``q_proj+v_proj``). Every resolved
name must exist in the model as a linear layer, else the error lists what
the model has.

A model whose module names ``model.family``'s table does not hold (GPT-2, OPT, GPT-NeoX, Phi-2,
Falcon, ...) gets its roles from its own module tree (:func:`tree_roles`): peft only knows
``all-linear``, and a per-architecture table cannot cover every model a user brings.

Mixture-of-experts models (Qwen2/3-MoE, Mixtral, ... in transformers 5) keep their experts as fused
3-D parameters (``mlp.experts.gate_up_proj``: experts x out x in), not linear layers: the ``mlp`` and
``all_linear`` roles adapt them through peft's ``target_parameters`` (:func:`expert_parameters`), so
that a role never leaves most of the MLP untouched; :func:`split_targets` tells the two kinds apart.
A fused ``gate_up_proj`` holds two projections (gate and up), so it gets rank 2r and alpha 2 alpha
(:func:`fused_rank_pattern`): rank r means rank r per projection, on every MoE model and every peft. peft
0.22+ does the same, but only when ``target_modules`` names a transformers-4 projection (a shared
expert's ``gate_proj``), so without the pattern the same sweep meant different adapters by version.
"""

from __future__ import annotations

import logging
import re

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
# Fused query/key/value projections across architectures (Phi-3, GPT-NeoX/Falcon, GPT-2, MPT/DBRX, ...).
FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv", "in_proj", "att_proj")
# Fused 3-D expert parameters -> how many projections each holds (peft's _MOE_FUSED_TARGETS, 0.22+).
FUSED_EXPERTS = {"gate_up_proj": 2}
log = logging.getLogger(__name__)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D")


def matches(full_name: str, target: str) -> bool:
    """peft's rule for a ``target_modules`` list entry: the whole name or a dotted suffix of it."""
    return full_name == target or full_name.endswith("." + target)


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the linear layers a LoRA can adapt.

    The output head is left out: peft's ``all-linear`` leaves it out too.
    """
    names: set[str] = set()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full, module in model.named_modules():
        if module is out:
            continue
        if _is_linear(module):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def expert_parameters(model: nn.Module) -> tuple[str, ...]:
    """The fused expert weights of a mixture-of-experts model as peft ``target_parameters`` suffixes
    (``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``): 3-D parameters under a module named
    ``experts`` inside a numbered block."""
    found: set[str] = set()
    for full, param in model.named_parameters():
        parts = full.split(".")
        if param.dim() == 3 and len(parts) >= 3 and "experts" in parts[:-1] and any(p.isdigit() for p in parts):
            block = max(i for i, p in enumerate(parts) if p.isdigit())
            found.add(".".join(parts[block + 1:]))
    return tuple(sorted(found))


def split_targets(model: nn.Module, names: list[str]) -> tuple[list[str], list[str]]:
    """``(target_modules, target_parameters)``: which resolved names are expert parameters (by their full
    suffix: a bare ``down_proj`` is a linear layer, e.g. a shared expert's)."""
    experts = set(expert_parameters(model))
    return [n for n in names if n not in experts], [n for n in names if n in experts]


def tree_roles(model: nn.Module, experts: tuple[str, ...] | None = None) -> dict[str, tuple[str, ...]]:
    """Roles read from the module tree, for any decoder: in each numbered block, ``attention`` is the
    linear layers under a module whose name holds ``attn``/``attention``, ``mlp`` the block's other
    linear layers; ``qv`` is q_proj + v_proj, else the fused qkv projection. A name that stands in
    both roles (GPT-2's ``c_proj``) is qualified by its parent (``attn.c_proj``, ``mlp.c_proj``)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, dict[str, set[str]]] = {"attention": {}, "mlp": {}}  # role -> short name -> parent names
    for full, module in model.named_modules():
        parts = full.split(".")
        if module is out or not _is_linear(module) or not any(p.isdigit() for p in parts[:-1]):
            continue
        block = parts[max(i for i, p in enumerate(parts[:-1]) if p.isdigit()) + 1:-1]
        role = "attention" if any(w in p.lower() for p in block for w in ("attn", "attention")) else "mlp"
        found[role].setdefault(parts[-1], set()).add(parts[-2] if len(parts) > 1 else "")
    roles: dict[str, tuple[str, ...]] = {}
    for role, names in found.items():
        other = found["mlp" if role == "attention" else "attention"]
        roles[role] = tuple(n if n not in other else f"{parent}.{n}"
                            for n, parents in names.items() for parent in (sorted(parents) if n in other else [""]))
    attn = set(found["attention"])
    qv = ("q_proj", "v_proj") if {"q_proj", "v_proj"} <= attn else tuple(n for n in FUSED_QKV if n in attn)[:1]
    roles["qv"] = qv
    roles["mlp"] += expert_parameters(model) if experts is None else experts
    roles["all_linear"] = roles["attention"] + roles["mlp"]
    return roles


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
    full_names = [n for n, m in model.named_modules() if _is_linear(m)]
    missing = [m for m in wanted if not any(matches(n, m) for n in full_names)]
    role = str(targets).strip()
    experts = expert_parameters(model)
    missing = [m for m in missing if m not in experts]  # expert parameters named with a+b
    if missing and role in ROLES:  # not this family's names: the model's own tree says what the role is
        found = tree_roles(model, experts)[role]
        if not found:
            raise ConfigError(f"lora.targets: role {role!r} has no module in this model; its linear modules "
                              f"are: {', '.join(have)}; name them with a+b")
        kind = getattr(getattr(model, "config", None), "model_type", "?")
        log.info("lora.targets=%s: %s's module names are not model.family=%s's; from the model's tree: %s",
                 role, kind, family, "+".join(found))
        return list(found)
    if missing and "+" not in role:
        raise ConfigError(
            f"lora.targets: {targets!r} is neither a role ({', '.join(ROLES)}) nor a linear module "
            f"of this {family} model; its linear modules are: {', '.join(have)}"
        )
    if missing:
        raise ConfigError(
            f"lora.targets: module(s) {', '.join(missing)} not in this {family} model; "
            f"its linear modules are: {', '.join(have)}"
        )
    extra = [p for p in experts if p not in wanted] if role in ("mlp", "all_linear") else []
    return list(wanted) + extra  # a MoE model's shared expert has the family's names; its experts do not


def projections(name: str) -> int:
    """How many projections the parameter ``name`` (a full name or an expert suffix) holds: 2 for a fused
    ``gate_up_proj`` (:data:`FUSED_EXPERTS`), else 1."""
    return FUSED_EXPERTS.get(name.rsplit(".", 1)[-1], 1)


def fused_rank_pattern(params: list[str], r: int, alpha: float) -> tuple[dict[str, int], dict[str, float]]:
    """peft's ``(rank_pattern, alpha_pattern)`` for the expert parameters in ``params`` that fuse several
    projections: rank and alpha times the number of projections, so the scale (alpha / rank) is unchanged.
    The key is the whole expert suffix (``mlp\\.experts\\.gate_up_proj``): Phi-3's linear ``mlp.gate_up_proj``
    keeps rank r, as peft gives it."""
    fused = {p: projections(p) for p in params if projections(p) > 1}
    return ({re.escape(p): r * n for p, n in fused.items()}, {re.escape(p): alpha * n for p, n in fused.items()})


def expected_lora_params(model: nn.Module, modules: list[str], r: int) -> int:
    """Sum over targeted linear layers of r * (in + out): LoRA_A is r x in, LoRA_B is out x r."""
    total = 0
    for full, module in model.named_modules():
        if any(matches(full, m) for m in modules) and _is_linear(module):
            total += r * sum(_features(module))
    _, params = split_targets(model, modules)  # as add_lora passes them to peft
    for full, param in model.named_parameters():  # peft's ParamWrapper: A is (r * experts) x in, B out x (r * experts)
        if param.dim() == 3 and any(matches(full, m) for m in params):
            experts, out, inp = param.shape
            total += r * projections(full) * int(experts) * (int(out) + int(inp))  # fused_rank_pattern
    return total


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear layer; GPT-2's Conv1D keeps them in its weight's shape (in x out)."""
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    rows, cols = module.weight.shape
    return int(rows), int(cols)
