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
                _plant(module, k, scale, g)
    return model.eval()


def _plant(module, k: int, scale: float, g) -> None:
    """Add ``scale * U V^T`` to the linear ``module``'s weight, U and V random orthonormal ``k`` columns."""
    out_f, in_f = module.weight.shape
    u = torch.linalg.qr(torch.randn(out_f, k, generator=g))[0]
    v = torch.linalg.qr(torch.randn(in_f, k, generator=g))[0]
    module.weight += scale * u @ v.T


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


def build_base(folder: Path, init: float, seed: int = 0, exact_vocab: bool = False) -> None:
    """ranksweep's tiny Llama shape and char tokenizer, initialised with std ``init`` (not 0.02, whose
    near-zero logits would make every model, teacher included, predict almost uniformly). ``exact_vocab``:
    a vocabulary of exactly the tokenizer's tokens (no id text cannot carry)."""
    from transformers import AutoModelForCausalLM

    from ranksweep.models import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", **({"vocab_size": len(tok)} if exact_vocab else {}))
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


# --------------------------------------------------------------------------- the recovery suite's tasks
#
# The suite (bench/rank_recovery.py) needs ground truth that only the planted update decides:
# - the teacher is the student's own NF4 base (double quantization, dequantized exactly as the student
#   loads it) plus the planted update, so no rank can buy back quantization error;
# - the vocabulary holds only tokens text can carry (the char tokenizer's 103: its specials round-trip as
#   their literal strings), and every token is sampled from the teacher's full distribution;
# - a text starts with a uniformly drawn character (the student gets no BOS and never predicts the first
#   token) and is longer than trainer.max_seq_len, so the appended EOS is cut off: nothing but the
#   teacher's own next-token distribution is trained on.

SUITE_TARGETS = "q_proj+k_proj+v_proj+o_proj+gate_proj+up_proj+down_proj"


def build_suite_base(folder: Path, init: float = 0.3, seed: int = 0) -> None:
    """:func:`build_base` with a vocabulary of exactly the tokenizer's tokens."""
    build_base(folder, init, seed, exact_vocab=True)


def nf4_weights(base: Path, cache: Path) -> dict[str, torch.Tensor]:
    """Every 4-bit linear layer's weight as the student sees it: loaded the way a trial loads its base
    (ranksweep.models.load_base, quant=nf4 with double quantization) and dequantized."""
    import bitsandbytes as bnb

    from ranksweep.config import ModelConfig, QuantConfig
    from ranksweep.models import load_base

    model, _, _ = load_base(ModelConfig(name="planted", id=str(base), family="llama", variant="base"),
                            QuantConfig(), "cpu", str(cache))
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            out[name] = bnb.functional.dequantize_4bit(w.data, w.quant_state).float().clone()
    return out


def nf4_teacher(base: Path, cache: Path, k: int, scale: float, seed: int, targets: str = SUITE_TARGETS):
    """The student's NF4 base (dequantized) plus a rank-``k`` update of singular values ``scale`` on every
    module in ``targets``; ``k=0``: the base itself (the null task)."""
    from transformers import AutoModelForCausalLM

    weights = nf4_weights(base, cache)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(1000 + seed)
    names = set(targets.split("+"))
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in weights:
                module.weight.copy_(weights[name])
                if k > 0 and name.rsplit(".", 1)[-1] in names:
                    _plant(module, k, scale, g)
    return model.eval()


@torch.no_grad()
def sample_full(model, tok, n: int, length: int, seed: int) -> list[str]:
    """``n`` texts of ``length`` tokens, each token from the model's full distribution (no BOS: the first
    character is drawn uniformly from printable ones); specials are written as their literal strings."""
    g = torch.Generator().manual_seed(seed)
    first = torch.tensor([tok.convert_tokens_to_ids(chr(c)) for c in PRINTABLE])
    ids = first[torch.randint(len(first), (n, 1), generator=g)]
    out = model(input_ids=ids, use_cache=True)
    for _ in range(length - 1):
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=g)
        ids = torch.cat([ids, nxt], dim=1)
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    table = tok.convert_ids_to_tokens(list(range(len(tok))))
    return ["".join(table[i] for i in row.tolist()) for row in ids]


def make_recovery_task(root: Path, k: int, seed: int, cache: Path, *, scale: float = 3.0, n_train: int = 3000,
                       n_eval: int = 400, seq: int = 32, targets: str = SUITE_TARGETS) -> dict:
    """One task of the suite in ``root``: ``k`` planted directions (0: the null task), teacher/data seed
    ``seed``, ``n_train`` + ``n_eval`` texts; the student's base in ``root.parent / 'base'``, shared by every
    task. Returns the overrides a ranksweep run on it needs."""
    base = root.parent / "base"
    if not (base / "config.json").exists():
        build_suite_base(base)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    teacher = nf4_teacher(base, cache, k, scale, seed, targets)
    texts = sample_full(teacher, tok, n_train + n_eval, seq + 8, seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:n_train]))
    (root / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[n_train:]))
    return {"model.id": str(base), "model.family": "llama", "model.variant": "base", "model.name": "planted",
            "quant": "nf4", "data": "jsonl", "data.path": str(root / "train.jsonl"),
            "data.eval_path": str(root / "eval.jsonl"), "data.text_column": "text", "data.metric": "none",
            "lora.targets": targets, "trainer.max_seq_len": seq}
