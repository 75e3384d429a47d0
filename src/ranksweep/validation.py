"""One-line checks that name the key a user would type, and the machinery to hang them on dataclass
fields: shared by the run config (:mod:`ranksweep.config`) and the sweeper's settings
(:mod:`ranksweep.sweep.settings`). A field declares its check with :func:`checked`; a schema's
``validate`` runs them (:func:`run_checks`) and then its rules across fields. OmegaConf types a
value; it has no ranges, choices or messages in a user's words, which is what is kept here.

Pure and schema-free: it imports neither schema (each passes its own names, e.g. to
:func:`did_you_mean`), and nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Callable, Optional

from ranksweep.errors import ConfigError

Check = Callable[[str, Any], None]  # (key, value) -> raise ConfigError naming the key


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(key: str, value: Any) -> None:
    require(is_int(value) and value > 0, f"{key} must be a positive integer, got {value!r}")


def choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def not_empty(key: str, value: Any) -> None:
    require(value is not None and bool(str(value).strip()), f"{key} must not be empty")


def one_of(*choices: Any) -> Check:
    """``key must be a, b or c, got 'd'``."""
    names = [str(c) for c in choices]
    words = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return lambda key, value: require(value in choices, f"{key} must be {words}, got {value!r}")


def listed(*choices: str) -> Check:
    """``key must be one of a, b, c; got 'd'`` (:func:`choice` as a field check)."""
    return lambda key, value: choice(key, value, choices)


def rule(ok: Callable[[Any], bool], says: str) -> Check:
    """``key <says>, got <value>`` unless ``ok(value)``: a check with its own wording."""
    return lambda key, value: require(ok(value), f"{key} {says}, got {value!r}")


def optional(check: Check) -> Check:
    """``check``, with null allowed."""
    return lambda key, value: None if value is None else check(key, value)


def finite(check: Check) -> Check:
    """``key must be a finite number, got nan`` for nan and infinities, before ``check``'s own range."""
    def run(key: str, value: Any) -> None:
        require(not (isinstance(value, float) and not math.isfinite(value)), f"{key} must be a finite number, "
                f"got {value!r}")
        check(key, value)
    return run


def all_of(*checks: Check) -> Check:
    """Each check in turn: the first that fails names the problem."""
    def run(key: str, value: Any) -> None:
        for check in checks:
            check(key, value)
    return run


def integer(at_least: int) -> Check:
    return lambda key, value: require(is_int(value) and value >= at_least,
                                      f"{key} must be an integer >= {at_least}, got {value!r}")


def number(above: Optional[float] = None, at_least: Optional[float] = None, below: Optional[float] = None,
           at_most: Optional[float] = None) -> Check:
    """A finite number within the given bounds; the message says which."""
    def check(key: str, value: Any) -> None:
        ok = is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) \
            and (below is None or value < below) and (at_most is None or value <= at_most)
        if ok:
            return
        if above == 0 and at_least is below is at_most is None:
            raise ConfigError(f"{key} must be a positive number, got {value!r}")
        if at_least is not None and below is at_most is None:
            raise ConfigError(f"{key} must be a finite number >= {at_least:g}, got {value!r}")
        low = f"({above:g}" if above is not None else f"[{at_least:g}"
        high = f"{below:g})" if below is not None else f"{at_most:g}]"
        raise ConfigError(f"{key} must be in {low}, {high}, got {value!r}")
    return check


def checked(default: Any, check: Optional[Check] = None) -> Any:
    """A dataclass field with its default and its check (run by :func:`run_checks`)."""
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def run_checks(obj: Any, prefix: str = "") -> None:
    """Every field check of a dataclass instance, in field order; the key is ``prefix + name``."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            check(prefix + f.name, getattr(obj, f.name))


def unknown_keys(values: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys of ``values`` (a container) that the dataclass ``schema`` does not have, as dotted paths."""
    if not isinstance(values, dict):
        return []
    hints = typing.get_type_hints(schema)
    out = []
    for key, value in values.items():
        if key not in hints:
            out.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            out += unknown_keys(value, hints[key], f"{prefix}{key}.")
    return out


def describe_omegaconf_error(exc: Exception, suggest: Optional[Callable[[str], str]] = None) -> str:
    """One line for an OmegaConf error, starting with the key: ``lora.r: 'abc' is not an integer``.
    ``suggest(key)`` adds a guess to an unknown key (the schema's :func:`did_you_mean`)."""
    key = getattr(exc, "full_key", None)
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    for pattern, repl in _OMEGACONF_MESSAGES:
        msg = re.sub(pattern, repl, msg)
    if key and msg == "unknown config key" and suggest is not None:
        msg += suggest(str(key))
    return f"{key}: {msg}" if key else msg


def did_you_mean(key: str, names: typing.Sequence[str], aliases: typing.Mapping[str, str], prefix: str = "") -> str:
    """`` (did you mean trainer.lr?)`` for a key that is another tool's name or a typo of one of ``names``, else ''.

    ``names``: the schema's dotted keys; ``aliases``: other tools' names for them (the last part of a key ->
    what to type instead); ``prefix``: where the schema sits on the command line (``hydra.sweeper.``), taken
    off ``key`` and put back on the guess. Tried in turn: an alias, a close name in the key's own group, a
    closer one anywhere, a name the key begins (4 characters at least)."""
    import difflib

    rel = key[len(prefix):] if prefix and key.startswith(prefix) else key
    group, _, last = rel.rpartition(".")
    group = f"{group}." if group else ""
    if last in aliases:
        return f" (did you mean {prefix}{aliases[last]}?)"
    siblings = [k for k in names if k.startswith(group) and "." not in k[len(group):]]
    for pool, cutoff in ((siblings, 0.75), (names, 0.85)):
        near = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in pool], n=1, cutoff=cutoff)
        if near:
            return f" (did you mean {prefix}{next(k for k in pool if k.rsplit('.', 1)[-1] == near[0])}?)"
    begun = [k for k in siblings if len(last) >= 4 and k[len(group):].startswith(last)]
    return f" (did you mean {prefix}{begun[0]}?)" if begun else ""


def leaf_keys(schema: type, prefix: str = "") -> list[str]:
    """The dotted keys of a dataclass schema's leaf fields, nested groups included (``lora.r``)."""
    hints = typing.get_type_hints(schema)
    out: list[str] = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


# OmegaConf's messages, reworded for someone who typed an override.
_OMEGACONF_MESSAGES = (
    (r"^Value (.*) of type '[^']*' could not be converted to Integer$", r"\1 is not an integer"),
    (r"^Value (.*) of type '[^']*' could not be converted to Float$", r"\1 is not a number"),
    (r"^Value (.*) is not a valid bool \(type [^)]*\)$", r"\1 is not a boolean"),
    (r"could not be converted to Integer", "is not an integer"),
    (r"could not be converted to Float", "is not a number"),
    (r"could not be converted to Boolean", "is not a boolean"),
    (r"^Key '[^']*' (?:is )?not in (?:struct|'\w+')$", "unknown config key"),
    (r"^field '[^']*' is not Optional$", "must not be null"),
    (r"^Missing mandatory value: ", "missing value for "),
)
