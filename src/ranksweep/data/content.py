"""What a value in a row may hold: the checks every source's values go through.

A text must be Unicode that can be written out as UTF-8 (no lone surrogate, no undecodable byte) and
hold no C0 control character but tab, line feed, carriage return and form feed (code corpora hold form
feeds); a value must be nested at most :data:`MAX_DEPTH` levels. :func:`problem` says what is wrong
with a value, naming its field (``messages[2].content``); the callers add the file and the row.

Undecodable bytes reach these checks as the surrogates U+DC80..U+DCFF that Python's ``surrogateescape``
error handler turns them into, so one check of each string finds both kinds of bad Unicode: :func:`clean`
(C code, no regex) on the good path, :data:`BAD_CHAR` to find what is wrong. JSON text: :func:`decode`,
:func:`json_error`, :func:`may_be_bad` (which rows need the walk), :func:`loads` (JSON text in a value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ranksweep.errors import DataError

# Deeper than any chat row, tool schema or metadata needs (a message list inside a row is 3 levels, a
# tool's JSON schema ~10); far below Python's recursion limit, so the code that reads rows (chat
# templates, json.dumps, datasets) never recurses out of it on user data.
MAX_DEPTH = 64

# C0 controls but \t \n \x0c \r, and every surrogate (a str holding one cannot be encoded).
BAD_CHAR = re.compile("[\x00-\x08\x0b\x0e-\x1f\ud800-\udfff]")
_STRICT, _LENIENT = json.JSONDecoder(), json.JSONDecoder(strict=False)
_CONTROL_BYTES = bytes(c for c in range(32) if c not in (9, 10, 12, 13))
_SCALARS = (int, float, type(None))  # what a walk need not look into


def clean(text: str) -> bool:
    """Whether ``text`` holds no bad character: C's UTF-8 encoder (which refuses surrogates) and
    ``bytes.translate``, several times faster than :data:`BAD_CHAR`, which then finds what is wrong."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(data.translate(None, _CONTROL_BYTES)) == len(data)


def describe(char: str, escaped: bool) -> str:
    """A bad character as errors name it; ``escaped``: U+DC80..U+DCFF are undecodable bytes."""
    code = ord(char)
    if escaped and 0xDC80 <= code <= 0xDCFF:
        return f"invalid UTF-8 (byte 0x{code - 0xDC00:02x})"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate \\u{code:04x}"
    return f"a control character U+{code:04X}"


def problem(value: Any, field: str = "", escaped: bool = False, depth: int = 0) -> str | None:
    """What is wrong with ``value`` (``None`` when nothing): ``messages[2].content holds a control
    character U+0000``, ``the key 'a\\x00' in meta holds ...``, ``meta is nested deeper than 64 levels``.

    ``field`` names the value (``""``: a whole row), ``depth`` the levels it is already nested in. Walked
    with a stack, not recursion (a container's keys and texts first, then what it holds, in order); numpy
    arrays (parquet, datasets) as lists.
    """
    stack: list[tuple[Any, int, Any]] = [(value, depth, None)]  # (value, depth, trail: (parent, step))
    search = BAD_CHAR.search
    while stack:
        node, level, trail = stack.pop()
        if isinstance(node, str):
            bad = None if clean(node) else search(node)
            if bad:
                return f"{_path(field, trail) or 'the row'} holds {describe(bad.group(), escaped)}"
            continue
        if hasattr(node, "tolist") and not isinstance(node, bytes):
            node = node.tolist()  # a numpy array (or scalar)
        if isinstance(node, Mapping):
            items: Any = node.items()
        elif isinstance(node, (list, tuple)):
            items = enumerate(node)
        else:
            continue
        if level >= MAX_DEPTH:
            top = _path(field, _root(trail)) if trail else field
            return f"{top or 'the row'} is nested deeper than {MAX_DEPTH} levels"
        inner = []
        for step, item in items:
            bad = search(step) if isinstance(step, str) else None
            if bad:
                at = _path(field, trail)
                return f"the key {step!r}{' in ' + at if at else ''} holds {describe(bad.group(), escaped)}"
            if isinstance(item, str):
                bad = None if clean(item) else search(item)
                if bad:
                    return f"{_path(field, (trail, step))} holds {describe(bad.group(), escaped)}"
            elif not isinstance(item, _SCALARS):
                inner.append((item, level + 1, (trail, step)))
        stack.extend(reversed(inner))
    return None


def _root(trail: Any) -> Any:
    while trail[0] is not None:
        trail = trail[0]
    return trail


def _path(field: str, trail: Any) -> str:
    steps = []
    while trail is not None:
        trail, step = trail
        steps.append(f"[{step}]" if isinstance(step, int) else f".{step}")  # a list's index, a key
    path = field + "".join(reversed(steps))
    return path[1:] if path.startswith(".") else path


def loads(text: str, where: str, field: str) -> Any:
    """``json.loads`` of a value's JSON text (a csv cell, a tool call's arguments), then checked:
    nesting past :data:`MAX_DEPTH` or a bad string in it is a DataError ``{where}: {field} ...``; invalid
    JSON raises ``json.JSONDecodeError`` as ``json.loads`` does."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: {field or 'the row'} is nested deeper than {MAX_DEPTH} levels") from None
    bad = problem(value, field, depth=1)  # the text is a value inside a row
    if bad:
        raise DataError(f"{where}: {bad}")
    return value


def may_be_bad(text: str) -> bool:
    """Whether the row parsed from ``text``, strict JSON of valid UTF-8, may hold a bad value: such JSON
    holds no raw control character or surrogate, so only a \\u escape of one, or more brackets than
    :data:`MAX_DEPTH`, can make one. Substring searches, far faster than walking the row (\\ud also
    starts the escapes of U+D000..U+D7FF: such a row is walked, and found good)."""
    return (text.count("{") + text.count("[") > MAX_DEPTH
            or "\\u" in text and ("\\u000" in text or "\\u001" in text or "\\ud" in text or "\\uD" in text))


def decode(text: str, pos: int | None = None) -> tuple[Any, int, bool]:
    """(value, end, strict): the JSON value at ``pos``, or ``text`` whole (``json.loads``) when None. A
    raw control character in a string, which strict JSON refuses, is let through here (``strict`` False)
    so that the row's check names its field."""
    def run(decoder: json.JSONDecoder) -> tuple[Any, int]:
        return (decoder.decode(text), len(text)) if pos is None else decoder.raw_decode(text, pos)

    try:
        return (*run(_STRICT), True)
    except json.JSONDecodeError as exc:
        if not BAD_CHAR.match(text, exc.pos):
            raise
    return (*run(_LENIENT), False)


def json_error(exc: json.JSONDecodeError, escaped: bool) -> str:
    """Invalid JSON as errors say it: the bad character where the parser stopped, or the parser's message."""
    bad = BAD_CHAR.match(exc.doc, exc.pos)
    return f"{describe(bad.group(), escaped)} at column {exc.colno}" if bad else f"invalid JSON ({exc.msg})"
