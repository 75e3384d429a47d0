"""Tokenising examples for causal-LM training (loss on the trained segments only), with an on-disk cache."""

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
from ranksweep.data.format import render_example
from ranksweep.errors import DataError
from ranksweep.files import atomic_dir

__all__ = ["tokenize_examples"]

# Bump when the tokenised layout changes, so old caches are not reused.
_CACHE_VERSION = 2


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
    examples: Sequence[dict[str, Any]], tokenizer: Any, variant: str, cfg: DataConfig, max_seq_len: int
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
        "system_prompt": cfg.system_prompt,
        "text_mode": bool(cfg.text_column),
        "max_seq_len": int(max_seq_len),
        "examples": content.hexdigest(),
        "n": len(examples),
    }
    return _sha(json.dumps(parts, sort_keys=True))


def tokenize_examples(
    examples: Sequence[dict[str, Any]],
    tokenizer: Any,
    variant: str,
    cfg: DataConfig,
    max_seq_len: int,
    cache_dir: str | None = None,
) -> Any:
    """Tokenise examples for causal-LM training with the loss on the trained tokens only.

    Returns a ``datasets.Dataset`` with columns

    - ``input_ids``: the example's tokens (prompt then response; a conversation's turns in order);
    - ``attention_mask``: all ones;
    - ``labels``: the token ids on the trained tokens (the response, the completion, the assistant
      turns, all of a text), ``-100`` elsewhere;
    - ``prompt_ids``: the tokens before the last trained segment (what generation starts from);
    - ``response``: the reference for that segment (the response, the completion, the last assistant
      turn, the text), stripped.

    Each segment of :func:`ranksweep.data.format.render_example` is tokenised on its own with
    ``add_special_tokens=False``, so a trained span starts and ends exactly at a segment boundary;
    for plain templates (and raw text) the tokenizer's BOS is put in front when the tokenizer
    normally adds one. Chat templates carry their own special tokens. Rows longer than
    ``max_seq_len`` lose tokens from the right; if the tokens before the first trained one reach
    ``max_seq_len`` they are cut from the left (the BOS kept when there is room) so that one trained
    token remains. Rows with no trained tokens are dropped.

    With ``cache_dir`` the result is saved under ``cache_dir/tokenized/<sha256 key>``
    (written to a temp folder, then moved into place) and loaded from there next time.

    Raises:
        DataError: naming ``trainer.max_seq_len`` when no row is left; a conversation the chat
        template refuses (naming the file and row).
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
    examples: Sequence[dict[str, Any]], tokenizer: Any, variant: str, cfg: DataConfig, max_seq_len: int
) -> dict[str, list]:
    if max_seq_len < 1:
        raise DataError(f"trainer.max_seq_len must be a positive integer, got {max_seq_len!r}")
    rendered = [render_example(ex, tokenizer, variant, cfg) for ex in examples]
    bos_id = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    pieces = _batch_ids(tokenizer, [text for segments, _, _ in rendered for text, _ in segments])

    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_ids": [], "response": []}
    at = 0
    for segments, add_bos, reference in rendered:
        ids: list[int] = []
        trained: list[bool] = []
        last_start = 0
        for (_, train), piece in zip(segments, pieces[at:at + len(segments)]):
            if train and piece:
                last_start = len(ids)
            ids += piece
            trained += [train] * len(piece)
        at += len(segments)
        prefix = [bos_id] if bos_id is not None and add_bos else []
        row = _truncate(prefix, ids, trained, max_seq_len)
        if row is None:
            continue
        row_ids, row_trained = row
        out["input_ids"].append(row_ids)
        out["attention_mask"].append([1] * len(row_ids))
        out["labels"].append([t if keep else IGNORE_INDEX for t, keep in zip(row_ids, row_trained)])
        out["prompt_ids"].append(_fit_prompt(prefix, ids[:last_start], max_seq_len))
        out["response"].append(reference)
    return out


def _batch_ids(tokenizer: Any, texts: list[str], chunk: int = 2048) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids.extend(tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"])
    return [list(x) for x in ids]


def _fit_prompt(prefix: list[int], prompt: list[int], max_seq_len: int) -> list[int]:
    """``prefix + prompt``, cut from the left (the prefix kept when there is room) to leave one token
    of ``max_seq_len`` for the response."""
    if len(prefix) + len(prompt) < max_seq_len:
        return prefix + prompt
    room = max_seq_len - 1  # prompt tokens that fit beside one response token
    if len(prefix) >= room:
        prefix = []
    keep = room - len(prefix)
    return prefix + (prompt[len(prompt) - keep :] if keep > 0 else [])


def _truncate(
    prefix: list[int], ids: list[int], trained: list[bool], max_seq_len: int
) -> tuple[list[int], list[bool]] | None:
    """Fit ``prefix + ids`` into ``max_seq_len`` (see :func:`tokenize_examples`); None without a trained token."""
    if True not in trained:
        return None
    first = trained.index(True)
    if len(prefix) + first < max_seq_len:
        row, keep = prefix + ids, [False] * len(prefix) + trained
        return row[:max_seq_len], keep[:max_seq_len]
    head = _fit_prompt(prefix, ids[:first], max_seq_len)
    return head + [ids[first]], [False] * len(head) + [True]
