"""States and keys are names, not quoted strings: read with :mod:`ast` over every module under src/.

- A trial's or a rung's state is Optuna's ``TrialState``: no quoted ``"COMPLETE"``, ``"PRUNED"``, ``"FAIL"``,
  ``"RUNNING"`` or ``"WAITING"`` is left in src/ (outputs write ``state.name``).
- A job's status is :class:`ranksweep.sweep.results.JobStatus`: nothing compares with a quoted status.
- Every user attribute written (``set_user_attr``, ``set_trial_user_attr``, a job's ``set_attrs``) and
  every one read by key is named by a constant of :mod:`ranksweep.sweep.keys`, whose strings are what
  existing studies hold.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ranksweep.sweep import keys

SRC = Path(__file__).resolve().parents[1] / "src"
KEYS_MODULE = "ranksweep.sweep.keys"
STATES = {s.name for s in TrialState}
STATUSES = {"done", "running", "failed", "todo"}
# call -> the position of the key among its arguments
WRITERS = {"set_user_attr": 0, "set_trial_user_attr": 1, "set_study_user_attr": 1}
FORWARDERS = {"set_attrs"}  # take a mapping of keys: their callers' dicts are checked

# What studies hold: changing one of these makes existing studies unreadable.
STORED = {
    "LADDER": "ladder", "RANK": "rank", "SEED": "seed", "SLOT": "slot", "ROLE": "role", "SEARCHED": "searched",
    "WORKER": "worker", "OUTPUT_DIR": "output_dir", "PARENT_TRIAL_NUMBER": "parent_trial_number",
    "BASE_VALUE": "base_value", "BASE_EVAL_LOSS": "base_eval_loss", "RANK_PARAM": "rank", "SEED_PARAM": "seed",
    "FAILURE_KIND": "failure_kind", "FAIL_REASON": "fail_reason", "CANCEL_REASON": "cancel_reason",
    "PRUNED_BY": "pruned_by", "HEARTBEAT_AT": "heartbeat_at", "CLAIM_LOST": "claim_lost", "ALPHA": "alpha",
    "TRAINABLE_PARAMS": "trainable_params", "TARGET_MODULES": "target_modules", "DATA_DIGEST": "data_digest",
    "WANDB_RUN": "wandb_run", "DURATION_S": "duration_s", "PEAK_MEM_GB": "peak_mem_gb",
    "TOKENS_PER_S": "tokens_per_s", "EVAL_LOSS": "eval_loss", "EXACT_MATCH": "exact_match", "LR": "lr",
    "SUPERVISED_TOKENS": "supervised_tokens", "STEPS": "steps", "EVAL_EXAMPLES": "eval_examples",
    "ADAPTER": "adapter", "PRESCREEN": "prescreen", "STUDY_SPACE": "ranksweep_space",
    "STUDY_SETTINGS": "ranksweep_settings",
    "STUDY_IDENTITY": "ranksweep_identity",
}
CONSTANTS = {name for name in dir(keys) if name.isupper()}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"


class Module:
    """One module's names for the keys module (``keys``, an alias) and for its constants (imported by name)."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: set[str] = set()
        self.names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ranksweep.sweep":
                self.aliases |= {a.asname or a.name for a in node.names if a.name == "keys"}
            elif isinstance(node, ast.ImportFrom) and node.module == KEYS_MODULE:
                self.names |= {a.asname or a.name for a in node.names if a.name in CONSTANTS}
            elif isinstance(node, ast.Import):
                self.aliases |= {a.asname for a in node.names if a.name == KEYS_MODULE and a.asname}

    def is_key(self, node: ast.AST) -> bool:
        """Whether ``node`` names a constant of the keys module."""
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return node.value.id in self.aliases and node.attr in CONSTANTS
        return isinstance(node, ast.Name) and node.id in self.names


def parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def enclosing_function(node: ast.AST, up: dict[ast.AST, ast.AST]) -> ast.AST | None:
    while node in up:
        node = up[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node
    return None


def forwarded_from(var: str, node: ast.AST, up: dict[ast.AST, ast.AST]) -> str | None:
    """The mapping that the loop ``for var, _ in mapping.items()`` around ``node`` takes ``var`` from, if any."""
    while node in up:
        node = up[node]
        if (isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and node.target.elts
                and isinstance(node.target.elts[0], ast.Name) and node.target.elts[0].id == var
                and isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Attribute)
                and node.iter.func.attr == "items" and isinstance(node.iter.func.value, ast.Name)):
            return node.iter.func.value.id
    return None


def dict_key_problems(mapping: str, func: ast.AST, mod: Module) -> list[ast.AST]:
    """The keys of the local dict ``mapping`` (its literals, its ``mapping[key] = ...``) that are not constants;
    the function itself when ``mapping`` is never built there."""
    built, bad = False, []
    for node in ast.walk(func):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id == mapping and isinstance(node.value, ast.Dict):
                    built = True
                    bad += [k or node.value for k in node.value.keys if k is None or not mod.is_key(k)]
                elif (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == mapping
                      and not mod.is_key(t.slice)):
                    bad.append(t)
    return bad if built else [func]


def key_problems(path: Path, tree: ast.Module) -> list[str]:
    """Every user-attribute write in the module whose key is not a keys constant."""
    mod, up, out = Module(tree), parents(tree), []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        name = call.func.attr
        if name in FORWARDERS and call.args:
            arg = call.args[0]
            func = enclosing_function(call, up)
            if isinstance(arg, ast.Dict):
                out += [where(path, k or arg) for k in arg.keys if k is None or not mod.is_key(k)]
            elif not (isinstance(arg, ast.Name) and isinstance(func, ast.FunctionDef) and func.name in FORWARDERS
                      and arg.id in {a.arg for a in func.args.args}):  # passed on by another forwarder

                out.append(f"{where(path, call)}: {name}() takes a dict literal of keys constants")
            continue
        if name not in WRITERS or len(call.args) <= WRITERS[name]:
            continue
        key = call.args[WRITERS[name]]
        if mod.is_key(key):
            continue
        func = enclosing_function(call, up)
        mapping = forwarded_from(key.id, call, up) if isinstance(key, ast.Name) and func is not None else None
        if mapping is None:
            out.append(f"{where(path, call)}: {name}({ast.unparse(key)}, ...)")
            continue
        params = {a.arg for a in func.args.args + func.args.kwonlyargs}  # type: ignore[union-attr]
        if mapping in params:  # a forwarder: its callers are checked
            if func.name not in FORWARDERS:  # type: ignore[union-attr]
                out.append(f"{where(path, call)}: {func.name} forwards keys but is not a checked forwarder")  # type: ignore[union-attr]
            continue
        out += [f"{where(path, k)}: {mapping}'s key {ast.unparse(k)}" for k in dict_key_problems(mapping, func, mod)]
    return out


def read_problems(path: Path, tree: ast.Module) -> list[str]:
    """Attributes read by a quoted key: ``x.user_attrs.get("rank")``, ``t.attrs["ladder"]``, ``"ladder" in t.attrs``."""
    stored = set(STORED.values())

    def attrs(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr in ("user_attrs", "attrs")

    def quoted(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in stored

    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and attrs(node.func.value) and node.args and quoted(node.args[0])):
            out.append(where(path, node))
        elif isinstance(node, ast.Subscript) and attrs(node.value) and quoted(node.slice):
            out.append(where(path, node))
        elif (isinstance(node, ast.Compare) and quoted(node.left)
              and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
              and any(attrs(c) for c in node.comparators)):
            out.append(where(path, node))
    return out


# ----------------------------------------------------------------------------- the tests


def test_no_quoted_trial_state_is_left_in_src():
    found = [f"{where(path, node)}: {node.value!r}" for path, tree in sources() for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATES]
    quoted = re.compile(r"""["'](""" + "|".join(sorted(STATES)) + r""")["']""")
    found += [f"{p.relative_to(SRC)}: {m.group(0)}" for p in sorted(SRC.rglob("*.j2"))
              for m in quoted.finditer(p.read_text(encoding="utf-8"))]
    assert not found, "use optuna.trial.TrialState:\n" + "\n".join(found)


def test_nothing_compares_with_a_quoted_job_status():
    def statuses(node: ast.AST) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(statuses(e) for e in node.elts)
        return isinstance(node, ast.Constant) and node.value in STATUSES

    found = [where(path, node) for path, tree in sources() for node in ast.walk(tree)
             if isinstance(node, ast.Compare) and any(statuses(c) for c in [node.left, *node.comparators])]
    assert not found, "use ranksweep.sweep.results.JobStatus:\n" + "\n".join(found)


def test_every_attribute_write_names_a_keys_constant():
    found = [p for path, tree in sources() for p in key_problems(path, tree)]
    assert not found, f"name the key with a {KEYS_MODULE} constant:\n" + "\n".join(found)


def test_no_attribute_is_read_by_a_quoted_key():
    found = [p for path, tree in sources() for p in read_problems(path, tree)]
    assert not found, f"read the attribute by its {KEYS_MODULE} constant:\n" + "\n".join(found)


def test_the_keys_hold_the_strings_studies_hold():
    assert {name: getattr(keys, name) for name in CONSTANTS} == STORED


@pytest.mark.parametrize("module", ["ranksweep/sweep/keys.py", "ranksweep/objectives.py"])
def test_the_tables_import_nothing(module):
    tree = ast.parse((SRC / module).read_text(encoding="utf-8"))
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [i for i in imports if "ranksweep" in i], imports


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checks above flag the forms they forbid and pass the ones they allow."""
    code = '''
from ranksweep.sweep import keys
from ranksweep.sweep.keys import RANK

def ok(trial, storage, reporter):
    trial.set_user_attr(keys.LADDER, 1)
    storage.set_trial_user_attr(7, RANK, 2)
    reporter.set_attrs({keys.ALPHA: 1, keys.LR: 2})
    attrs = {keys.SEED: 0}
    attrs[keys.SLOT] = 1
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return trial.user_attrs.get(keys.RANK), t.attrs[keys.LADDER]

def set_attrs(self, attrs):
    for key, value in attrs.items():
        self.trial.set_user_attr(key, value)

def bad(trial, storage, reporter, given):
    trial.set_user_attr("ladder", 1)
    storage.set_trial_user_attr(7, "rank", 2)
    reporter.set_attrs({"alpha": 1, keys.LR: 2})
    attrs = {keys.SEED: 0}
    attrs["slot"] = 1
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    for k, v in given.items():
        trial.set_user_attr(k, v)
    return trial.user_attrs.get("rank"), t.attrs["ladder"], "ladder" in t.attrs
'''
    path = SRC / "probe.py"  # only named, never written
    tree = ast.parse(code)
    problems = key_problems(path, tree)
    assert [p.split(":")[1] for p in problems] == ["20", "21", "22", "24", "28"], problems
    assert [p.split(":")[1] for p in read_problems(path, tree)] == ["29", "29", "29"]
