"""Tokenising examples for causal-LM training (loss on response tokens only), with an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranksweep.config import DataConfig
from ranksweep.data.collate import IGNORE_INDEX
from ranksweep.data.format import format_pair, has_chat_template
from ranksweep.errors import DataError
from ranksweep.files import atomic_dir

__all__ = ["tokenize_examples"]

# Bump when the tokenised layout changes, so old caches are not reused.
_CACHE_VERSION = 1


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front when asked for its special tokens."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(ids) and ids[0] == bos and (not plain or plain[0] != bos)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_key(
    examples: Sequence[dict[str, str]], tokenizer: Any, variant: str, cfg: DataConfig, max_seq_len: int
) -> str:
    """sha256 over everything that changes the tokenised rows."""
    content = hashlib.sha256()
    for ex in examples:
        content.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        content.update(b"\n")
    parts = {
        "version": _CACHE_VERSION,
        "tokenizer": str(getattr(tokenizer, "name_or_path", "") or ""),
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "chat_template": _sha(str(getattr(tokenizer, "chat_template", None) or "")),
        "specials": [
            str(getattr(tokenizer, "bos_token", None)),
            str(getattr(tokenizer, "eos_token", None)),
        ],
        "variant": variant,
        "instruction": cfg.instruction,
        "template": cfg.template,
        "text_mode": bool(cfg.text_column),
        "max_seq_len": int(max_seq_len),
        "examples": content.hexdigest(),
        "n": len(examples),
    }
    return _sha(json.dumps(parts, sort_keys=True))


def tokenize_examples(
    examples: Sequence[dict[str, str]],
    tokenizer: Any,
    variant: str,
    cfg: DataConfig,
    max_seq_len: int,
    cache_dir: str | None = None,
) -> Any:
    """Tokenise examples for causal-LM training with the loss on response tokens only.

    Returns a ``datasets.Dataset`` with columns

    - ``input_ids``: prompt tokens then response tokens;
    - ``attention_mask``: all ones;
    - ``labels``: ``-100`` on the prompt tokens, the token ids on the response tokens;
    - ``prompt_ids``: the prompt tokens alone (what generation starts from);
    - ``response``: the reference response (text mode: the text), stripped.

    Prompt and response are tokenised separately with ``add_special_tokens=False``;
    for prompts built from the base template (and in text mode) the tokenizer's BOS
    is put in front when the tokenizer normally adds one. Chat templates carry their
    own special tokens. Rows longer than ``max_seq_len`` lose response tokens from
    the right; if the prompt alone reaches ``max_seq_len`` it is cut from the left
    (its BOS kept when there is room) so that one response token remains. Rows with
    no response tokens are dropped.

    With ``cache_dir`` the result is saved under ``cache_dir/tokenized/<sha256 key>``
    (written to a temp folder, then moved into place) and loaded from there next time.

    Raises:
        DataError: naming ``trainer.max_seq_len`` when no row is left.
    """
    import datasets

    # datasets caches map() results only for file-backed datasets; these rows are built in memory,
    # so the key below (tokenizer, template, lengths, rows) names the cache entry instead.
    target: Path | None = None
    if cache_dir is not None:
        target = Path(os.path.expanduser(str(cache_dir))) / "tokenized" / _cache_key(
            examples, tokenizer, variant, cfg, max_seq_len
        )
        if target.is_dir():
            try:
                return datasets.load_from_disk(str(target))
            except Exception:  # noqa: BLE001 - a damaged cache entry: rebuild it
                shutil.rmtree(target, ignore_errors=True)

    columns = _tokenize_columns(examples, tokenizer, variant, cfg, max_seq_len)
    if not columns["input_ids"]:
        raise DataError(
            f"trainer.max_seq_len={max_seq_len} leaves no response tokens in any of the "
            f"{len(examples)} examples (or every response is empty); raise trainer.max_seq_len"
        )
    ds = datasets.Dataset.from_dict(columns)
    if target is not None:
        atomic_dir(target, lambda tmp: ds.save_to_disk(str(tmp)))  # temp folder, then moved into place
    return ds


def _tokenize_columns(
    examples: Sequence[dict[str, str]], tokenizer: Any, variant: str, cfg: DataConfig, max_seq_len: int
) -> dict[str, list]:
    if max_seq_len < 1:
        raise DataError(f"trainer.max_seq_len must be a positive integer, got {max_seq_len!r}")
    pairs = [format_pair(ex, tokenizer, variant, cfg) for ex in examples]
    # The base template (and text mode) gets the BOS the tokenizer would add;
    # chat-template prompts already contain their specials.
    chat = variant == "instruct" and has_chat_template(tokenizer)
    bos_id = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    prompt_ids = _batch_ids(tokenizer, [p for p, _ in pairs])
    response_ids = _batch_ids(tokenizer, [r for _, r in pairs])

    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_ids": [], "response": []}
    for ex, prompt, response in zip(examples, prompt_ids, response_ids):
        is_text = "text" in ex
        prefix = [bos_id] if bos_id is not None and (is_text or not chat) else []
        prompt, response = _truncate(prefix, prompt, response, max_seq_len)
        if not response:
            continue
        ids = prompt + response
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append([IGNORE_INDEX] * len(prompt) + list(response))
        out["prompt_ids"].append(prompt)
        out["response"].append((ex["text"] if is_text else ex["response"]).strip())
    return out


def _batch_ids(tokenizer: Any, texts: list[str], chunk: int = 2048) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids.extend(tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"])
    return [list(x) for x in ids]


def _truncate(
    prefix: list[int], prompt: list[int], response: list[int], max_seq_len: int
) -> tuple[list[int], list[int]]:
    """Fit ``prefix + prompt + response`` into ``max_seq_len`` (see :func:`tokenize_examples`)."""
    full_prompt = prefix + prompt
    if not response:
        return full_prompt, []
    if len(full_prompt) < max_seq_len:
        return full_prompt, response[: max_seq_len - len(full_prompt)]
    room = max_seq_len - 1  # prompt tokens that fit beside one response token
    if len(prefix) >= room:
        prefix = []
    keep = room - len(prefix)
    body = prompt[len(prompt) - keep :] if keep > 0 else []
    return prefix + body, response[:1]
