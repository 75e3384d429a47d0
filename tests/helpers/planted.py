"""A task with a known answer: a teacher that is a tiny base model plus a planted rank-k update.

The base is ranksweep's random-init tiny Llama (``ranksweep.models.build_tiny``). The teacher adds,
to every linear layer a LoRA can adapt (all_linear), an update ``s * U @ V.T`` with orthonormal
``U``, ``V`` of k columns, so its singular values are all ``s``. Text sampled from the teacher
trains a student on the same 16-bit base: an adapter of rank >= k can match the teacher exactly, a
smaller one cannot, so the capacity curve is flat from r = k on, and a trained rank-r adapter
(r > k) should use about k directions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PRINTABLE = range(33, 127)  # characters the char tokenizer maps one-to-one (no whitespace: data is rstripped)


def planted_teacher(base_dir: Path, k: int, scale: float, seed: int = 0, targets: str = "o_proj+down_proj"):
    """The base model with a rank-``k`` update of singular values ``scale`` on every module in ``targets``."""
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    names = set(targets.split("+"))
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in names and isinstance(module, torch.nn.Linear):
                out_f, in_f = module.weight.shape
                u = torch.linalg.qr(torch.randn(out_f, k, generator=g))[0]
                v = torch.linalg.qr(torch.randn(in_f, k, generator=g))[0]
                module.weight += scale * u @ v.T
    return model.eval()


@torch.no_grad()
def sample_texts(model, tok, n: int, length: int, seed: int = 0) -> list[str]:
    """``n`` strings sampled from ``model`` (temperature 1, printable characters only), cut at random
    lengths between ``length // 2`` and ``length``: the end of a text (EOS) is then unpredictable for every
    student alike, instead of a position to count that some ranks learn faster."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([tok.convert_tokens_to_ids(chr(c)) for c in PRINTABLE])
    ids = torch.full((n, 1), tok.bos_token_id)
    out = model(input_ids=ids, use_cache=True)
    for _ in range(length):
        probs = torch.softmax(out.logits[:, -1, allowed].float(), dim=-1)
        nxt = allowed[torch.multinomial(probs, 1, generator=g)[:, 0]]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
    cut = torch.randint(length // 2, length + 1, (n,), generator=g)
    return [tok.decode(row[1:1 + int(c)].tolist()) for row, c in zip(ids, cut)]


def build_base(folder: Path, init: float, seed: int = 0) -> None:
    """ranksweep's tiny Llama shape and char tokenizer, initialised with std ``init`` (not 0.02, whose
    near-zero logits would make every model, teacher included, predict almost uniformly)."""
    from transformers import AutoModelForCausalLM

    from ranksweep.models import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama")
    cfg.initializer_range = init
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def make_task(root: Path, k: int = 4, scale: float = 3.0, n: int = 2400, length: int = 40, seed: int = 0,
              init: float = 0.3, targets: str = "o_proj+down_proj") -> dict:
    """Write ``root/base`` (the student's base), ``root/train.jsonl`` and ``root/eval.jsonl``; return the
    overrides a ranksweep run on this task needs."""
    from transformers import AutoTokenizer

    base = root / "base"
    if not (base / "config.json").exists():
        build_base(base, init, seed)
    tok = AutoTokenizer.from_pretrained(base)
    teacher = planted_teacher(base, k, scale, seed, targets)
    texts = sample_texts(teacher, tok, n, length, seed)
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"model.id": str(base), "model.family": "llama", "model.variant": "base", "model.name": "planted",
            "quant": "none", "data": "jsonl", "data.path": str(path), "data.text_column": "text",
            "data.metric": "none", "lora.targets": targets}
