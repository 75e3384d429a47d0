"""What a trial measures: next-token accuracy, exact match of greedy generations, the objective."""

from __future__ import annotations

from typing import Any

import torch

from ranksweep import data as data_mod
from ranksweep.config import RunConfig

__all__ = ["argmax_logits", "generate_exact_match", "objective_value", "token_accuracy"]


def argmax_logits(logits, labels):
    """Keep only the predicted ids: the Trainer then never gathers [batch, seq, vocab] logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits if logits.dim() == 2 else logits.argmax(dim=-1)  # the chunked eval returns ids


def token_accuracy(eval_pred) -> dict[str, float]:
    """Next-token accuracy on response tokens: informative long before exact match moves off 0."""

    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds, labels = preds[:, :-1], labels[:, 1:]
    mask = labels != -100
    return {"token_accuracy": float((preds == labels)[mask].mean()) if mask.any() else float("nan")}


@torch.no_grad()
def generate_exact_match(model, tokenizer, examples, n: int, max_new_tokens: int, batch: int, device: str):
    """Greedy-decode the first ``n`` eval prompts and score exact match against the references."""
    n = min(n, len(examples))
    if n == 0:
        return None, []
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    preds: list[str] = []
    for start in range(0, n, batch):
        rows = [examples[i] for i in range(start, min(start + batch, n))]
        width = max(len(r["prompt_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding for generation
            p = torch.tensor(r["prompt_ids"], dtype=torch.long)
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row in out[:, width:]:
            preds.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    refs = [examples[i]["response"] for i in range(n)]
    return data_mod.exact_match(preds, refs), list(zip(refs, preds))


def objective_value(run: RunConfig, metrics: dict[str, Any]) -> float:
    """The value the sweeper optimises: ``metrics[run.objective]``."""
    if run.objective == "eval_loss":
        return float(metrics["eval_loss"])
    if run.objective == "perplexity":
        return float(metrics["perplexity"])
    return float(metrics["exact_match"])
