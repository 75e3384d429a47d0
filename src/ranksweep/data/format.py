"""Formatting an example as the text a model trains on: pieces of text, each trained or not.

Instruct models (with a chat template) see the tokenizer's chat template; base models, and
tokenizers without a chat template, see ``data.template`` for prompt/response pairs and the plain
template below for conversations::

    ### System:
    {system}

    ### User:
    {user}

    ### Assistant:
    {assistant}<eos>

Only the assistant's turns are trained (their text and end-of-turn / EOS tokens); roles' headers,
the system, user and tool turns and the blank lines between turns are not.

Tool use (OpenAI's ``tool_calls`` on assistant turns, ``tool`` turns, a row's ``tools``) goes to a chat
template that renders it, as TRL passes it (``apply_chat_template(messages, tools=...)``). A template
that would drop it (tested once per template), and the plain template, get it as text instead: each
call as a JSON line ``{"name": ..., "arguments": ...}`` after the assistant turn's content (trained),
and the tools' schemas as JSON lines under ``Tools:`` in the system turn (not trained). A tool turn is
``### Tool:`` in the plain template.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ranksweep.config import DataConfig
from ranksweep.errors import DataError

__all__ = ["PLAIN_HEADERS", "conversation_segments", "format_pair", "has_chat_template", "render_example"]

log = logging.getLogger("ranksweep")

#: The plain template's turn headers (base models, tokenizers without a chat template).
PLAIN_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n",
                 "tool": "### Tool:\n"}
PLAIN_SEPARATOR = "\n\n"

# A (text, trained) piece of an example's training text.
Segment = tuple[str, bool]
_WARNED: set[int] = set()  # chat templates already warned about (once per process)


def _template_key(tokenizer: Any) -> int:
    """A chat template's key in the once-per-template caches below."""
    return hash(str(getattr(tokenizer, "chat_template", "")))


def _eos(tokenizer: Any) -> str:
    return getattr(tokenizer, "eos_token", None) or ""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer: Any, variant: str) -> bool:
    if variant not in ("base", "instruct"):
        raise ValueError(f"variant must be 'base' or 'instruct', got {variant!r}")
    return variant == "instruct" and has_chat_template(tokenizer)


def format_pair(example: dict[str, str], tokenizer: Any, variant: str, cfg: DataConfig) -> tuple[str, str]:
    """``(prompt_text, response_text)``; their concatenation is the training text.

    - text mode (``{"text": ...}``): ``("", text + eos)``;
    - ``base``: ``cfg.template.format(instruction=..., prompt=...)`` (after ``cfg.system_prompt`` and a
      blank line, when set) and ``response + eos``;
    - ``instruct``: the tokenizer's chat template on one user turn
      (``cfg.instruction + prompt``, after a system turn when ``cfg.system_prompt`` is set) with the
      generation prompt, and the rest of the conversation once the assistant's response is appended
      (its end-of-turn tokens included). Should the full conversation not start with the prompt
      text, the response part falls back to ``response + eos``. A tokenizer with
      no chat template falls back to the ``base`` template.

    ``eos`` is ``tokenizer.eos_token``, or nothing when the tokenizer has none.
    """
    chat = uses_chat_template(tokenizer, variant)
    eos = _eos(tokenizer)
    if "text" in example:
        return "", example["text"] + eos
    prompt, response = example["prompt"], example["response"]
    system = example.get("system") or cfg.system_prompt  # a row's own (alpaca's system column) first
    if chat:
        messages = _with_system([{"role": "user", "content": cfg.instruction + prompt}], system)
        prompt_text = _render(tokenizer, messages, True, "data.format")
        full = _render(tokenizer, messages + [{"role": "assistant", "content": response}], False, "data.format")
        if isinstance(full, str) and isinstance(prompt_text, str) and full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text):]
        return str(prompt_text), response + eos
    try:
        prompt_text = cfg.template.format(instruction=cfg.instruction, prompt=prompt)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"data.template: cannot format {cfg.template!r} ({type(exc).__name__}: {exc}); "
            "use {instruction} and {prompt}, and double literal braces"
        ) from None
    if system:
        prompt_text = system + PLAIN_SEPARATOR + prompt_text
    return prompt_text, response + eos


def render_example(example: dict[str, Any], tokenizer: Any, variant: str, cfg: DataConfig
                   ) -> tuple[list[Segment], bool, str]:
    """``(segments, add_bos, reference)`` of any example (see :mod:`ranksweep.data.rows`).

    ``add_bos``: whether the tokenizer's BOS goes in front (plain templates and raw text; chat templates
    carry their own specials). ``reference``: what the model should generate for the last trained
    segment (exact match): the response, the completion, the last assistant turn, or the text.
    """
    chat = uses_chat_template(tokenizer, variant)
    if "messages" in example:
        return conversation_segments(example, tokenizer, chat, cfg), not chat, _last_assistant(example)
    if "completion" in example:  # TRL's standard prompt-completion: the texts as they are
        return ([(example["prompt"], False), (example["completion"] + _eos(tokenizer), True)], True,
                example["completion"].strip())
    prompt, response = format_pair(example, tokenizer, variant, cfg)
    is_text = "text" in example
    reference = (example["text"] if is_text else example["response"]).strip()
    return [(prompt, False), (response, True)], is_text or not chat, reference


def _last_assistant(example: dict[str, Any]) -> str:
    last = [m for m in example["messages"] if m["role"] == "assistant"][-1]
    return (last["content"] or "\n".join(_call_lines(last))).strip()


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def conversation_segments(example: dict[str, Any], tokenizer: Any, chat: bool, cfg: DataConfig) -> list[Segment]:
    """A conversation as segments: the assistant turns from ``example["train_from"]`` on are trained.

    ``cfg.system_prompt`` becomes the first turn of a conversation that has no system turn.
    """
    messages = list(example["messages"])
    train_from = int(example.get("train_from", 0))
    tools = example.get("tools") or None
    calls_ok, tools_ok = _renders_tool_use(tokenizer) if chat else (False, False)
    with_system = _with_system(messages, cfg.system_prompt)
    with_system = _tools_as_text(with_system, None if tools_ok else tools, calls=not calls_ok)
    train_from += len(with_system) - len(messages)
    trained = [i for i, m in enumerate(with_system) if m["role"] == "assistant" and i >= train_from]
    if not chat:
        return _plain_segments(with_system, set(trained), _eos(tokenizer))
    return _chat_segments(with_system, trained, tokenizer, str(example.get("where", "data.path")),
                          tools if tools_ok else None)


def _call_lines(message: dict[str, Any]) -> list[str]:
    return [json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
            for c in message.get("tool_calls") or ()]


def _tools_as_text(messages: list[dict[str, Any]], tools: list | None, calls: bool) -> list[dict[str, Any]]:
    """Tool use as text (see the module docstring): the tools' schemas into the system turn (one is added
    when there is none), and with ``calls`` each assistant turn's calls after its content."""
    if not tools and not (calls and any("tool_calls" in m for m in messages)):
        return messages  # no tool use: the conversation as it is
    out = [dict(m) for m in messages]
    if calls:
        for m in out:
            lines = _call_lines(m)
            m.pop("tool_calls", None)
            if lines:
                m["content"] = "\n".join(([m["content"]] if m["content"] else []) + lines)
    if tools:
        text = "Tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


_PROBE = "ranksweep_probe_fn"
_TOOL_USE: dict[int, tuple[bool, bool]] = {}  # chat template -> (renders tool calls, renders tools)


def _renders_tool_use(tokenizer: Any) -> tuple[bool, bool]:
    """Whether the chat template prints an assistant turn's tool calls, and a ``tools`` list: rendered once
    with a probe name. Templates that do not (ChatML without tool support prints only ``content``)
    would drop them silently."""
    key = _template_key(tokenizer)
    if key not in _TOOL_USE:
        user = {"role": "user", "content": "q"}
        call = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": _PROBE, "arguments": {"x": 1}}}]}
        tool = {"type": "function", "function": {"name": _PROBE, "description": "d",
                                                 "parameters": {"type": "object", "properties": {}}}}
        got = []
        for messages, tools in (([user, call], None), ([user], [tool])):
            try:
                text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
            except Exception:  # noqa: BLE001 - a template that refuses them does not render them
                text = ""
            got.append(_PROBE in str(text))
        _TOOL_USE[key] = (got[0], got[1])
    return _TOOL_USE[key]


def _plain_segments(messages: list[dict[str, str]], trained: set[int], eos: str) -> list[Segment]:
    out: list[Segment] = []
    for i, m in enumerate(messages):
        header = PLAIN_HEADERS[m["role"]]
        if m["role"] == "assistant":
            out += [(header, False), (m["content"] + eos, i in trained), (PLAIN_SEPARATOR, False)]
        else:
            out.append((header + m["content"] + PLAIN_SEPARATOR, False))
    return out


# TRL's SFTTrainer masks the assistant's tokens only through chat templates with {% generation %}
# blocks (return_assistant_tokens_mask), which few templates have, and its prompt/completion path
# trains one completion per row; neither covers every assistant turn under any template. Hence:
# render the conversation prefix by prefix and train the text each assistant turn adds.
def _chat_segments(messages: list[dict[str, Any]], trained: list[int], tokenizer: Any, where: str,
                   tools: list | None = None) -> list[Segment]:
    """Each trained assistant turn ``i``: the text from the previous boundary to the generation prompt
    before ``i`` (not trained), then what rendering message ``i`` adds (trained, end of turn included).
    A template that renders earlier turns differently once later ones follow (e.g. one that drops
    the reasoning of earlier turns) gets the last turn trained only."""
    out: list[Segment] = []
    done = ""
    for i in trained:
        prompt = _render(tokenizer, messages[:i], True, where, tools)
        full = _render(tokenizer, messages[: i + 1], False, where, tools)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            break
        out += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    else:
        return out
    last = trained[-1]
    prompt = _render(tokenizer, messages[:last], True, where, tools)
    full = _render(tokenizer, messages[: last + 1], False, where, tools)
    if not full.startswith(prompt):
        raise DataError(f"{where}: the chat template renders the conversation before the last assistant turn "
                        "differently once that turn is added, so its tokens cannot be told apart; "
                        "use model.variant=base for the plain template")
    key = _template_key(tokenizer)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s: the chat template rewrites earlier turns once later ones follow; conversations "
                    "like this one train on their last assistant turn only", where)
    return [(prompt, False), (full[len(prompt):], True)]


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, where: str,
            tools: list | None = None) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja's TemplateError, or the template's raise_exception()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{where}: the chat template refused this conversation ({first[:200]})") from None
    return str(text)
