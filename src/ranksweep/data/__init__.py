"""Single-task datasets: load, split, format, tokenise and collate.

The pipeline a trial runs::

    examples = load_examples(cfg.data)                       # [{"prompt", "response"}] or [{"text"}]
    train, evals = split_examples(examples, cfg.data.eval_size, cfg.data.seed)
    train_ds = tokenize_examples(train, tok, variant, cfg.data, max_seq_len, cache_dir=...)
    loader = DataLoader(train_ds, collate_fn=CausalCollator(tok), ...)
    score = exact_match(predictions, eval_ds["response"])

- :mod:`ranksweep.data.load`: the sources (cmudict, jsonl, csv, parquet, hub), subsampling, splitting;
- :mod:`ranksweep.data.format`: an example as prompt and response text (base template or chat template);
- :mod:`ranksweep.data.tokenize`: token ids and labels, truncation, the on-disk cache;
- :mod:`ranksweep.data.collate`: padded batches, exact match.

Every problem with the user's data raises :class:`~ranksweep.errors.DataError`, one
line naming the config key (``data.path``, ``data.prompt_column``...) and the file.
"""

from __future__ import annotations

from ranksweep.data.collate import IGNORE_INDEX, CausalCollator, as_list, exact_match
from ranksweep.data.format import format_pair, has_chat_template
from ranksweep.data.load import load_examples, split_examples
from ranksweep.data.tokenize import tokenize_examples

__all__ = [
    "IGNORE_INDEX",
    "CausalCollator",
    "as_list",
    "exact_match",
    "format_pair",
    "has_chat_template",
    "load_examples",
    "split_examples",
    "tokenize_examples",
]
