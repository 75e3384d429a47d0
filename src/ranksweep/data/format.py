"""Formatting an example as the text a model trains on: base template or chat template."""

from __future__ import annotations

from typing import Any

from ranksweep.config import DataConfig
from ranksweep.errors import DataError

__all__ = ["format_pair", "has_chat_template"]


def _eos(tokenizer: Any) -> str:
    return getattr(tokenizer, "eos_token", None) or ""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_pair(example: dict[str, str], tokenizer: Any, variant: str, cfg: DataConfig) -> tuple[str, str]:
    """``(prompt_text, response_text)``; their concatenation is the training text.

    - text mode (``{"text": ...}``): ``("", text + eos)``;
    - ``base``: ``cfg.template.format(instruction=..., prompt=...)`` and ``response + eos``;
    - ``instruct``: the tokenizer's chat template on one user turn
      (``cfg.instruction + prompt``) with the generation prompt, and the rest of the
      conversation once the assistant's response is appended (its end-of-turn
      tokens included). Should the full conversation not start with the prompt
      text, the response part falls back to ``response + eos``. A tokenizer with
      no chat template falls back to the ``base`` template.

    ``eos`` is ``tokenizer.eos_token``, or nothing when the tokenizer has none.
    """
    if variant not in ("base", "instruct"):
        raise ValueError(f"variant must be 'base' or 'instruct', got {variant!r}")
    eos = _eos(tokenizer)
    if "text" in example:
        return "", example["text"] + eos
    prompt, response = example["prompt"], example["response"]
    if variant == "instruct" and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": cfg.instruction + prompt}]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False
        )
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
    return prompt_text, response + eos
