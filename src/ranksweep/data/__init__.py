"""Single-task datasets: load, split, format, tokenise and collate.

The pipeline a trial runs::

    train, evals = load_splits(cfg.data)                     # held-out eval set, or a seeded split
    train_ds = tokenize_examples(train, tok, variant, cfg.data, max_seq_len, cache_dir=...)
    loader = DataLoader(train_ds, collate_fn=CausalCollator(tok), ...)
    score = exact_match(predictions, eval_ds["response"])

- :mod:`ranksweep.data.load`: the sources (cmudict, jsonl, csv, parquet, hub), subsampling, splitting,
  the held-out eval set (``data.eval_path``, ``data.eval_split``);
- :mod:`ranksweep.data.rows`: the data formats (pairs, text, messages, sharegpt, prompt_completion),
  told apart from the columns and checked row by row;
- :mod:`ranksweep.data.format`: an example as trained and untrained pieces of text (chat template,
  base template, the plain conversation template);
- :mod:`ranksweep.data.tokenize`: token ids and labels, truncation, the on-disk cache;
- :mod:`ranksweep.data.collate`: padded batches, exact match.

Every problem with the user's data raises :class:`~ranksweep.errors.DataError`, one
line naming the config key (``data.path``, ``data.prompt_column``...), the file and the row.
"""

from __future__ import annotations

from ranksweep.data.collate import IGNORE_INDEX, CausalCollator, as_list, exact_match
from ranksweep.data.format import PLAIN_HEADERS, format_pair, has_chat_template, render_example
from ranksweep.data.load import load_examples, load_splits, split_examples
from ranksweep.data.rows import FORMATS
from ranksweep.data.tokenize import tokenize_examples

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "PLAIN_HEADERS",
    "CausalCollator",
    "as_list",
    "exact_match",
    "format_pair",
    "has_chat_template",
    "load_examples",
    "load_splits",
    "render_example",
    "split_examples",
    "tokenize_examples",
]
