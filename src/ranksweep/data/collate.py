"""Collating tokenised rows into padded batches, and scoring generations by exact match."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["IGNORE_INDEX", "CausalCollator", "as_list", "exact_match"]

#: Label value ignored by the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


# transformers' DataCollatorForSeq2Seq pads the same way but hands every column (prompt_ids, the
# response text) to tokenizer.pad, which refuses them.
@dataclass
class CausalCollator:
    """Right-pad a list of tokenised rows into a batch of tensors.

    ``input_ids`` are padded with ``tokenizer.pad_token_id`` (falling back to the
    EOS id, then 0), ``attention_mask`` with 0 and ``labels`` with -100. Other
    columns (``prompt_ids``, ``response``) are dropped. With ``pad_to_multiple_of``
    the batch length is rounded up to a multiple of it.
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    @property
    def pad_id(self) -> int:
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if isinstance(value, int):
                return value
        return 0

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("CausalCollator got an empty batch")
        rows = [[int(t) for t in as_list(f["input_ids"])] for f in features]
        length = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            m = int(self.pad_to_multiple_of)
            length = ((length + m - 1) // m) * m
        pad = self.pad_id
        input_ids, attention, labels = [], [], []
        for f, ids in zip(features, rows):
            n = len(ids)
            mask = [int(t) for t in as_list(f["attention_mask"])] if "attention_mask" in f else [1] * n
            lab = [int(t) for t in as_list(f["labels"])] if "labels" in f else list(ids)
            input_ids.append(ids + [pad] * (length - n))
            attention.append(mask + [0] * (length - n))
            labels.append(lab + [IGNORE_INDEX] * (length - n))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def as_list(value: Any) -> Iterable[Any]:
    """A tensor's or array's values as a list; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") else value


# The `evaluate` package's exact_match does not collapse runs of whitespace (and is no dependency).
def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after whitespace normalisation.

    Runs of whitespace become one space and ends are trimmed; case matters.
    Returns 0.0 for no pairs.

    Raises:
        ValueError: when the two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hits = sum(" ".join(str(p).split()) == " ".join(str(r).split()) for p, r in zip(predictions, references))
    return hits / len(references)
