"""mkdocs hook: the settings reference (docs/settings.md), written from the code that defines the settings.

Every ``hydra.sweeper.*`` setting comes from ``ranksweep.sweep.settings.SweepSettings``, every config key
from ``ranksweep.config.RunConfig`` and its groups, every preset and group option from ``sweeps/`` and
``conf/``. Per field: its type and default (the dataclass's, and the packaged option's value where that
differs), what a value must be (the field's own check, asked with values no check accepts: its error
message is the rule in the user's words), and its help (a ``help`` entry in the field's metadata, else
the comment lines right above the field and a comment on its line). The page's prose stays in
docs/settings.md; the tables replace its marker at build time, so nothing is written twice.

Read defensively: the way checks sit on fields changes; a field whose check cannot be described gets
an empty cell, never a failed build. Only a missing marker or a schema that does not import fails it.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import io
import logging
import math
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
PAGE = "settings.md"
MARKER = "<!-- settings-reference -->"
SWEEPER = "hydra.sweeper."
HELP_KEYS = ("help", "doc", "description")
log = logging.getLogger("mkdocs.hooks.settings_reference")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning(f"{PAGE} has no {MARKER} marker: the generated settings reference has nowhere to go")
        return markdown
    return markdown.replace(MARKER, render())


# ----------------------------------------------------------------------------------------------- the page


def render() -> str:
    """The generated part of the page: the sweeper's settings and presets, then each group of the run config."""
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))  # the checkout being documented, before any installed copy
    from ranksweep.config import RunConfig
    from ranksweep.sweep.settings import SweepSettings

    out = [f"## `{SWEEPER}*`: the sweeper", "",
           f"From `SweepSettings` (`{_where(SweepSettings)}`): `{SWEEPER}<name>=value` on the command line, "
           "or under `hydra: sweeper:` in a preset.", ""]
    out += _doc(SweepSettings)
    out += _table(SweepSettings, SWEEPER, conf={})
    out += ["", "### Presets: `+sweep=NAME`", "",
            "The group `sweep`, one YAML each in `sweeps/`; what each sets under `hydra.sweeper`:", "",
            "| preset | sets | about |", "|---|---|---|"]
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        data = _yaml(path)
        sweeper = ((data.get("hydra") or {}).get("sweeper") or {}) if isinstance(data, dict) else {}
        sets = ", ".join(f"`{k}={_value(v)}`" for k, v in _flat(sweeper))
        out.append(f"| `+sweep={path.stem}` | {_cell(sets, code=False)} | {_cell(_about(path))} |")

    hints = _hints(RunConfig)
    defaults = _conf_defaults()
    top = _yaml(REPO / "conf" / "config.yaml")
    out += ["", "## The run config", "",
            f"From `RunConfig` and its groups (`{_where(RunConfig)}`): `group.key=value` on the command line, "
            "`group=option` to pick one of a group's files in `conf/`. *default* is the packaged option's "
            "value (`conf/config.yaml`'s defaults list), with the schema's own default beside it where the "
            "two differ.", ""]
    scalars = []
    for f in dataclasses.fields(RunConfig):
        kind = hints.get(f.name)
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            scalars.append(f)
            continue
        option = defaults.get(f.name)
        conf = _yaml(REPO / "conf" / f.name / f"{option}.yaml") if option else (top.get(f.name) or {})
        out += [f"### `{f.name}`", ""]
        out += _doc(kind)
        options = sorted((REPO / "conf" / f.name).glob("*.yaml"))
        if options:
            out += [f"Options (`{f.name}=NAME`, in `conf/{f.name}/`; default `{option}`): "
                    + ", ".join(f"`{p.stem}`" + (f" ({_cell(_about(p))})" if _about(p) else "") for p in options),
                    ""]
        elif f.name in top:
            out += ["Set in `conf/config.yaml`.", ""]
        out += _table(kind, f"{f.name}.", conf=conf if isinstance(conf, dict) else {})
        out.append("")
    out += ["### Top level", ""]
    out += _table(RunConfig, "", conf=top if isinstance(top, dict) else {}, only=[f.name for f in scalars])
    launchers = sorted((REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
    if launchers:
        out += ["", "### `hydra/launcher`", "",
                "Hydra's launcher group, with ranksweep's SLURM presets (`conf/hydra/launcher/`) beside Hydra's "
                "own (`basic`, `joblib`, `submitit_local`, ...):", "", "| option | about |", "|---|---|"]
        out += [f"| `hydra/launcher={p.stem}` | {_cell(_about(p))} |" for p in launchers]
    return "\n".join(out) + "\n"


def _table(cls: type, prefix: str, conf: dict, only: Optional[list[str]] = None) -> list[str]:
    hints = _hints(cls)
    comments = field_comments(cls)
    base = _base_instance(cls, conf)
    rows = ["| key | type | default | check | what it is |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or (only is not None and f.name not in only):
            continue
        key = prefix + f.name
        meta = dict(f.metadata or {})
        helps = [str(meta[k]) for k in HELP_KEYS if isinstance(meta.get(k), str)]
        text = " ".join(helps) or comments.get(f.name, "")
        must = describe_metadata(meta, key)
        if not must:
            must = _probe_validate(base, f.name, key) if base is not None else ""
        default = _default(f)
        if f.name in conf and not _same(conf[f.name], f):
            shown = f"`{_value(conf[f.name])}`<br>schema: `{default}`" if default != "required" else \
                f"`{_value(conf[f.name])}`"
        else:
            shown = "*required*" if default == "required" else f"`{default}`"
        rows.append(f"| `{key}` | {_cell(type_name(hints.get(f.name, Any)))} | {_cell(shown, code=False)} "
                    f"| {_cell(must)} | {_cell(text)} |")
    return rows


# --------------------------------------------------------------------------------------- what a field is


def type_name(kind: Any) -> str:
    """``int``, ``float or null``, ``dict[str, str]``, ``any``: a type as a user reads it."""
    if kind is Any:
        return "any"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or type(kind).__name__ == "UnionType":
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(kind, type):
        return kind.__name__
    return str(kind).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        try:
            value = f.default_factory()  # type: ignore[misc]
        except Exception:
            return "?"
    else:
        return "required"
    return "required" if value == "???" else _value(value)  # omegaconf.MISSING


def _same(value: Any, f: dataclasses.Field) -> bool:
    """Whether a config file's value is the field's default (16 and 16.0 are)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(value, (int, float)) and isinstance(default, (int, float)) and not isinstance(value, bool):
        return float(value) == float(default)
    return _value(value) == _default(f)


def _value(value: Any) -> str:
    """A value as it is typed in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if value == value.strip() and value.isprintable() else repr(value)
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return str(value)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's help: the comment lines right above it (no blank line between) and a comment on its
    own lines, or a string literal right below it; from the class that declares the field."""
    out: dict[str, str] = {}
    for owner in reversed(cls.__mro__):
        if "__annotations__" not in owner.__dict__ or owner is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(owner))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        trailing: dict[int, str] = {}
        try:
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][:tok.start[1]].strip():
                    trailing[tok.start[0]] = tok.string
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
        try:
            body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        except (SyntaxError, IndexError, AttributeError):
            continue
        for i, node in enumerate(body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip())
                row -= 1
            own = [trailing[r] for r in range(node.lineno, (node.end_lineno or node.lineno) + 1) if r in trailing]
            after = body[i + 1] if i + 1 < len(body) else None
            doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                        and isinstance(after.value.value, str)) else ""
            text = " ".join(re.sub(r"^#+\s?", "", c).strip() for c in above + own)
            text = " ".join(part for part in (text, " ".join(doc.split())) if part)
            if text:
                out[node.target.id] = text
    return out


# ------------------------------------------------------------------------------------ what a value must be


class _Probe:
    """A value no check accepts (not a number, a choice, a path, a list)."""

    def __repr__(self) -> str:
        return "<probe>"

    __str__ = __repr__


PROBES: tuple[Any, ...] = (_Probe(), None, "", -1, float("nan"))


def describe_metadata(meta: dict, key: str) -> str:
    """What a field's metadata says a value must be: its check's own words, and any other plain entry."""
    parts = []
    for name, value in meta.items():
        if name in HELP_KEYS:
            continue
        if name == "check":
            parts += [describe_check(c, key) for c in (value if isinstance(value, (list, tuple)) else [value])]
        elif name == "choices" and isinstance(value, (list, tuple)):
            parts.append("must be one of " + ", ".join(str(v) for v in value))
        elif isinstance(value, (str, int, float, bool)):
            parts.append(f"{name}: {value}")
    return "; ".join(p for p in parts if p)


def describe_check(check: Any, key: str) -> str:
    """The rule a check enforces, from the message it raises for values nothing accepts."""
    if check is None:
        return ""
    describe = getattr(check, "describe", None)
    if callable(describe):
        try:
            return str(describe())
        except Exception:
            pass
    if not callable(check):
        return str(check)
    for probe in PROBES:
        try:
            check(key, probe)
        except Exception as exc:
            said = _rule_from(exc, key)
            if said:
                return said
    return ""


def _probe_validate(base: Any, name: str, key: str) -> str:
    """For a field without a check of its own: what the schema's ``validate`` says about a bad value."""
    for probe in PROBES:
        try:
            bad = copy.deepcopy(base)
            setattr(bad, name, probe)
            bad.validate()
        except Exception as exc:
            said = _rule_from(exc, key, strict=True)
            if said:
                return said
    return ""


def _rule_from(exc: Exception, key: str, strict: bool = False) -> str:
    """``lora.r must be a positive integer, got -4`` -> ``must be a positive integer``. ``strict``: only a
    message about this key alone (``key must ...``, ``key: ...``), not a rule across keys."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    short = key[len(SWEEPER):] if key.startswith(SWEEPER) else None
    for name in (key, short):
        if name and re.match(rf"{re.escape(name)}(?:[ :]|$)", text):
            text = text[len(name):].lstrip(": ")
            break
    else:
        if strict or key not in text:
            return ""
    return re.sub(r"[,;]?\s*got\s.*$", "", text).strip().rstrip(",;")


def _base_instance(cls: type, conf: dict) -> Any:
    """A valid instance to probe ``validate`` with (the packaged option's values), or None."""
    if not callable(getattr(cls, "validate", None)):
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        base = cls(**{k: v for k, v in conf.items() if k in names and not (isinstance(v, str) and "${" in v)})
        copy.deepcopy(base).validate()
        return base
    except Exception:
        return None


# --------------------------------------------------------------------------------------------- helpers


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _doc(cls: type) -> list[str]:
    """The first paragraph of a class's docstring, as a line of the page."""
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature
        return []
    text = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
    return [re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text), ""]  # Sphinx roles as code


def _where(cls: type) -> str:
    try:
        return str(Path(inspect.getsourcefile(cls) or "").resolve().relative_to(REPO))
    except (TypeError, ValueError):
        return cls.__module__


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _conf_defaults() -> dict[str, str]:
    """``{group: option}`` from ``conf/config.yaml``'s defaults list."""
    out = {}
    for entry in _yaml(REPO / "conf" / "config.yaml").get("defaults") or []:
        if isinstance(entry, dict):
            for group, option in entry.items():
                if isinstance(group, str) and not group.startswith("override") and isinstance(option, str):
                    out[group] = option
    return out


def _about(path: Path) -> str:
    """A config file's opening comment, up to its first full stop."""
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            head.append(line.lstrip("#").strip())
    text = re.split(r":?\s+ranksweep\s", " ".join(head))[0]  # up to a command line
    end = re.search(r"[.?!]\)?(?=\s|$)", text)
    return text[:end.end()] if end else text


def _flat(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _cell(text: str, code: bool = True) -> str:
    """Text for a table cell: one line, pipes escaped, emphasis and HTML characters kept literal."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    if not code:
        return text
    parts = re.split(r"(`[^`]*`)", text)  # code spans stay as they are
    return "".join(p if p.startswith("`") else p.replace("*", "\\*").replace("<", "&lt;") for p in parts)
