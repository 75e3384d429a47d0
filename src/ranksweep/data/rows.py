"""What a row holds: the data formats of the fine-tuning ecosystem, told apart and checked.

``data.format`` (``auto`` tells it from the columns, in this order):

- ``messages``: a list of ``{"role", "content"}`` (TRL's conversational format, OpenAI's chat format),
  roles ``system``, ``user``, ``assistant``, ``tool``; the column is ``messages`` (or
  ``data.messages_column``); a ``content`` may be a list of text parts (``[{"type": "text", "text": ...}]``),
  joined; an assistant turn may carry ``tool_calls`` (OpenAI's ``[{"type": "function", "function":
  {"name", "arguments"}}]``, or ``[{"name", "arguments"}]``) with no content; a ``tools`` column (a list
  of function schemas, or its JSON text) is the row's tools, as TRL passes them to the chat template;
- ``sharegpt``: a list of ``{"from", "value"}`` with ``from`` one of ``system``, ``human``, ``gpt``
  (``user`` and ``assistant`` are taken too), and LLaMA-Factory's ``function_call`` (an assistant turn
  whose value is the call's JSON) and ``observation`` (a tool turn); the column is ``conversations``
  (or ``data.messages_column``);
- ``pairs``: ``data.prompt_column`` and ``data.response_column`` (ranksweep's prompt/response);
- ``prompt_completion``: TRL's ``prompt`` and ``completion``, both text (concatenated as they are,
  no template) or both message lists (the completion's assistant turns are trained);
- ``alpaca``: ``instruction``, an optional ``input`` and ``output`` (axolotl's and LLaMA-Factory's
  alpaca), trained as a prompt/response pair whose prompt is the instruction, a blank line and the
  input when there is one; a ``system`` column, when present, is the pair's system prompt;
- ``text``: ``data.text_column`` (default ``text``), the loss on every token.

An example is a dict: ``{"prompt", "response"}``, ``{"text"}``, ``{"prompt", "completion"}``, or a
conversation ``{"messages": [{"role", "content"}, ...], "train_from": i, "where": ...}`` whose assistant
turns from message ``i`` on are trained (``where`` names the row in errors raised while rendering it).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ranksweep.config import DATA_FORMATS, DataConfig
from ranksweep.data.content import clean, loads, problem
from ranksweep.errors import DataError

__all__ = ["FORMATS", "ROLES", "Table", "detect_format", "table_examples"]

FORMATS = DATA_FORMATS
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's speakers (and the aliases axolotl and LLaMA-Factory accept) -> roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}


@dataclass
class Table:
    """A source's rows, column by column: what every reader returns.

    ``key`` is the config key of the source (``data.path``, ``data.eval_path``, ``data.eval_split``),
    ``name`` the file or dataset, ``label(i)`` row ``i`` as errors name it (``line 7``, ``row 3``).
    ``values(column, key)`` gives one column's values; a missing column is a DataError naming ``key``;
    with ``optional=True`` a missing column (or a row without it) gives None instead.

    Every value handed out is checked (:mod:`ranksweep.data.content`): a bad character or nesting too
    deep is a DataError naming the row and the field. ``get`` is the reader's unchecked
    ``values``; ``checked``: the reader checked whole rows as it read them (JSON lines); ``escaped``: it
    decoded bytes with ``surrogateescape``, so U+DC80..U+DCFF in a value are undecodable bytes.
    """

    key: str
    name: str
    columns: list[str]
    first: Mapping[str, Any]
    n: int
    label: Callable[[int], str]
    get: Callable[..., Sequence[Any]]
    checked: bool = False
    escaped: bool = False

    def where(self, i: int) -> str:
        return f"{self.name} {self.label(i)}"

    def values(self, column: str, key: str, optional: bool = False) -> Sequence[Any]:
        got = self.get(column, key, optional)
        if not self.checked:
            for i, value in enumerate(got):
                if value is None or (isinstance(value, str) and clean(value)):
                    continue  # the common cases
                bad = problem(value, column, self.escaped, depth=1)
                if bad:
                    raise DataError(f"{self.key}: {self.where(i)}: {bad}")
        return got


def missing_column(key: str, column: str, where: str, columns: Sequence[Any]) -> DataError:
    listed = ", ".join(map(str, columns)) or "(none)"
    return DataError(f"{key}: column {column!r} not in {where}; columns are: {listed}")


def _conversation_kind(table: Table, column: str) -> str:
    """messages or sharegpt, from the keys of the first message of the first row."""
    try:
        first = _as_list(table.first.get(column), column, table.key)
    except DataError:
        return "messages"  # the row's own check reports it
    message = first[0] if isinstance(first, list) and first else None
    if isinstance(message, Mapping) and "role" not in message and ("from" in message or "value" in message):
        return "sharegpt"
    return "messages"


def detect_format(table: Table, cfg: DataConfig) -> str:
    """``cfg.format``, or for ``auto`` the format the columns say (see the module docstring)."""
    if cfg.format != "auto":
        return cfg.format
    if cfg.text_column:
        return "text"
    columns = set(table.columns)
    for column in ([cfg.messages_column] if cfg.messages_column else ["messages", "conversations"]):
        if column in columns or cfg.messages_column:
            return _conversation_kind(table, column)
    if cfg.prompt_column in columns and cfg.response_column in columns:
        return "pairs"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if "instruction" in columns and "output" in columns and cfg.prompt_column not in columns:
        return "alpaca"
    if "text" in columns and cfg.prompt_column not in columns:
        return "text"
    return "pairs"  # the missing column is reported as data.prompt_column / data.response_column


def table_examples(table: Table, cfg: DataConfig, fmt: str) -> list[dict[str, Any]]:
    """The table's rows as examples of format ``fmt`` (checked row by row)."""
    if fmt == "pairs":
        return _text_columns(table, [("data.prompt_column", cfg.prompt_column, "prompt"),
                                     ("data.response_column", cfg.response_column, "response")])
    if fmt == "text":
        return _text_columns(table, [("data.text_column", cfg.text_column or "text", "text")])
    if fmt in ("messages", "sharegpt"):
        column = cfg.messages_column or ("messages" if fmt == "messages" else "conversations")
        values = table.values(column, "data.messages_column" if cfg.messages_column else "data.format")
        out = []
        tools = table.values("tools", "data.format", optional=True)
        for i, value in enumerate(values):
            where = f"{table.key}: {table.where(i)}"
            messages = parse_messages(value, column, where, sharegpt=fmt == "sharegpt")
            _check_conversation(messages, column, where, need_assistant=True)
            out.append({"messages": messages, "train_from": 0, "where": where, **parse_tools(tools[i], where)})
        return out
    if fmt == "prompt_completion":
        return _prompt_completion(table)
    if fmt == "alpaca":
        return _alpaca(table)
    raise DataError(f"data.format must be one of auto, {', '.join(FORMATS)}; got {fmt!r}")


def _text_columns(table: Table, used: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    columns = {field: table.values(column, key) for key, column, field in used}
    out: list[dict[str, Any]] = [{} for _ in range(table.n)]
    for key, column, field in used:
        for i, value in enumerate(columns[field]):
            out[i][field] = to_text(value, key, column, table.where(i))
    return out


def _prompt_completion(table: Table) -> list[dict[str, Any]]:
    prompts, completions = table.values("prompt", "data.format"), table.values("completion", "data.format")
    tools = table.values("tools", "data.format", optional=True)
    out: list[dict[str, Any]] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        where = f"{table.key}: {table.where(i)}"
        if not any(isinstance(v, (list, tuple)) or (hasattr(v, "tolist") and not isinstance(v, str))
                   for v in (prompt, completion)):
            # Standard (TRL): the two texts are concatenated as they are, no template.
            out.append({"prompt": to_text(prompt, "data.format", "prompt", table.where(i)),
                        "completion": to_text(completion, "data.format", "completion", table.where(i))})
            continue
        head = parse_messages(prompt, "prompt", where, sharegpt=False)
        tail = parse_messages(completion, "completion", where, sharegpt=False)
        if not any(m["role"] == "assistant" for m in tail):
            raise DataError(f"{where}: completion has no assistant turn to train on")
        _check_conversation(head + tail, "prompt", where, need_assistant=True)
        out.append({"messages": head + tail, "train_from": len(head), "where": where, **parse_tools(tools[i], where)})
    return out


def _alpaca(table: Table) -> list[dict[str, Any]]:
    """instruction (+ "\n\n" + input when not empty) -> output; a ``system`` column is the pair's system prompt.
    ``input`` and ``system`` are optional, for the whole file or row by row."""
    rows = _text_columns(table, [("data.format", "instruction", "instruction"), ("data.format", "output", "response")])
    extra = {c: table.values(c, "data.format", optional=True) for c in ("input", "system")}
    out = []
    for i, row in enumerate(rows):
        got = {c: "" if v[i] is None or _is_nan(v[i]) else to_text(v[i], "data.format", c, table.where(i))
               for c, v in extra.items()}
        prompt = row["instruction"] + (f"\n\n{got['input']}" if got["input"].strip() else "")
        system = {"system": got["system"]} if got["system"] else {}
        out.append({"prompt": prompt, "response": row["response"], **system})
    return out


def _as_list(value: Any, field: str, where: str) -> Any:
    """A message list as Python: numpy arrays (parquet) become lists, JSON text (csv) is parsed (and
    checked: :func:`ranksweep.data.content.loads`)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return loads(value, where, field)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: {field}: invalid JSON ({exc.msg})") from None
    return value


def parse_messages(value: Any, field: str, where: str, sharegpt: bool) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from a message list; a bad message is a DataError naming ``field[i]``."""
    value = _as_list(value, field, where)
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else _kind(value)
        raise DataError(f"{where}: {field} must be a non-empty list of messages; got {got}")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    allowed = ("system, human, gpt, function_call, observation (or user, assistant, tool)" if sharegpt
               else ", ".join(ROLES))
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise DataError(f"{where}: {field}[{i}] must be an object with {role_key!r} and {content_key!r}; "
                            f"got {_kind(message)}")
        if role_key not in message:
            keys = ", ".join(map(str, message)) or "(none)"
            raise DataError(f"{where}: {field}[{i}] has no {role_key!r}; its keys are: {keys}")
        raw = message[role_key]
        role = SHAREGPT_ROLES.get(raw) if sharegpt and isinstance(raw, str) else raw
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{i}].{role_key} must be one of {allowed}; got {raw!r}")
        content = _plain(message.get(content_key))
        at = f"{where}: {field}[{i}]"
        calls = _tool_calls(message.get("tool_calls"), where, f"{field}[{i}].tool_calls") if role == "assistant" else []
        if sharegpt and raw == "function_call":  # LLaMA-Factory: the call's JSON as the value
            value_at = f"{field}[{i}].{content_key}"
            calls, content = _tool_calls(_as_call_json(content, where, value_at), where, value_at), ""
        if isinstance(content, list):  # content parts (OpenAI's chat format, TRL's multimodal rows)
            content = _text_parts(content, f"{at}.{content_key}")
        if content is None and calls:
            content = ""  # OpenAI's assistant turn that only calls tools
        if role == "tool" and isinstance(content, Mapping):
            content = json.dumps(content, ensure_ascii=False)  # a tool's result kept as a JSON object
        if not isinstance(content, str):
            raise DataError(f"{at}.{content_key} must be text; got {_kind(content)}")
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = calls
        for key in ("name", "tool_call_id") if role == "tool" else ():
            if isinstance(message.get(key), str):
                msg[key] = message[key]
        out.append(msg)
    return out


def _plain(value: Any) -> Any:
    """JSON-like Python from parquet / datasets cells (numpy arrays and scalars inside)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_call_json(value: Any, where: str, field: str) -> Any:
    if isinstance(value, str):
        try:
            return loads(value, where, field)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: {field}: a function_call's value must be the call's JSON "
                            f"({exc.msg})") from None
    return value


def _tool_calls(value: Any, row: str, field: str) -> list[dict[str, Any]]:
    """OpenAI's ``[{"type": "function", "function": {"name", "arguments"}}]`` from that or from bare
    ``{"name", "arguments"}`` calls; ``arguments`` given as JSON text become an object, as chat templates
    expect."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and _is_nan(value)):
        return []
    where = f"{row}: {field}"
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{where} must be a list of calls; got {_kind(value)}")
    calls = []
    for j, call in enumerate(value):
        fn = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError(f"{where}[{j}] must be a call with a function name "
                            '({"type": "function", "function": {"name": ..., "arguments": {...}}})')
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = loads(args, row, f"{field}[{j}].function.arguments") if args.strip() else {}
            except json.JSONDecodeError:
                pass  # kept as text: some templates print the arguments as given
        out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, Mapping) and isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


def parse_tools(value: Any, where: str) -> dict[str, Any]:
    """``{"tools": [...]}`` from a row's ``tools`` cell (a list of schemas, or its JSON text), or ``{}``."""
    value = _plain(value)
    if value is None or value == "" or value == [] or (isinstance(value, float) and _is_nan(value)):
        return {}
    if isinstance(value, str):
        try:
            value = loads(value, where, "tools")
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: tools: invalid JSON ({exc.msg})") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise DataError(f"{where}: tools must be a list of function schemas; got {_kind(value)}")
    return {"tools": value}


def _text_parts(parts: list, where: str) -> str:
    """The text of ``[{"type": "text", "text": ...}, ...]``, joined; another kind of part is a DataError."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            got = f"a part of type {kind!r}" if isinstance(kind, str) else _kind(part)
            raise DataError(f"{where}[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) can be "
                            f"trained; got {got}")
        texts.append(part["text"])
    return "".join(texts)


def _check_conversation(messages: list[dict[str, Any]], field: str, where: str, need_assistant: bool) -> None:
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise DataError(f"{where}: {field}[{i}]: a system turn must come first")
        if m["role"] == "tool" and (i == 0 or messages[i - 1]["role"] not in ("assistant", "tool")):
            raise DataError(f"{where}: {field}[{i}]: a tool turn must follow an assistant turn (its call)")
    body = [m for m in messages if m["role"] != "system"]
    if body and body[0]["role"] != "user":
        raise DataError(f"{where}: {field}: the first turn after the system turn must be the user's, "
                        f"got {body[0]['role']!r}")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: {field} has no assistant turn to train on")


def _kind(value: Any) -> str:
    if value is None or _is_nan(value):
        return "null"
    return f"a {type(value).__name__}"


def to_text(value: Any, key: str, column: str, where: str) -> str:
    """A cell as text: str, or a number converted with ``str``; anything else is a DataError."""
    if isinstance(value, str):
        return value.rstrip()
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, numbers.Integral):
        return str(int(value))
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return str(value)
    kind = "missing (null)" if value is None or _is_nan(value) else f"a {type(value).__name__}, not text"
    raise DataError(f"{key}: column {column!r} in {where} is {kind}")


def _is_nan(value: Any) -> bool:
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing markers
        return True
    try:
        return isinstance(value, numbers.Real) and math.isnan(float(value))
    except (TypeError, ValueError):
        return False
