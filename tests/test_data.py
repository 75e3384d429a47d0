"""Tests for ranksweep.data: loading, splitting, formatting, tokenising, collating, scoring.

Offline and fast: the tokenizer is a character-level fast tokenizer built in-process.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from ranksweep.config import DataConfig
from ranksweep.data import (
    IGNORE_INDEX,
    CausalCollator,
    exact_match,
    format_pair,
    load_examples,
    split_examples,
    tokenize_examples,
)
from ranksweep.errors import DataError

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _char_tokenizer(add_bos: bool = True, chat_template: str | None = CHATML):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def tok():
    """Adds a BOS like Llama tokenizers do, and has a ChatML chat template."""
    return _char_tokenizer()


@pytest.fixture(scope="module")
def tok_plain():
    """No BOS added, no chat template."""
    return _char_tokenizer(add_bos=False, chat_template=None)


PAIRS = [{"prompt": f"word{i}", "response": f"W {i} R"} for i in range(20)]


def _write_jsonl(path: Path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading


def test_cmudict_loads_sorted_alphabetic():
    ex = load_examples(DataConfig())
    assert len(ex) > 100_000
    words = [e["prompt"] for e in ex]
    assert words == sorted(words)
    by_word = {e["prompt"]: e["response"] for e in ex}
    assert by_word["abandon"] == "AH0 B AE1 N D AH0 N"
    assert all(w == w.lower() and all(c.isalpha() or c == "'" for c in w) for w in words)


def test_cmudict_subsample_is_deterministic():
    a = load_examples(DataConfig(max_examples=300, seed=3))
    b = load_examples(DataConfig(max_examples=300, seed=3))
    c = load_examples(DataConfig(max_examples=300, seed=4))
    assert len(a) == 300 and a == b and a != c
    assert [e["prompt"] for e in a] == sorted(e["prompt"] for e in a)


def test_cmudict_rejects_text_column():
    with pytest.raises(DataError, match="data.text_column"):
        load_examples(DataConfig(text_column="text"))


def test_jsonl_custom_columns_and_blank_lines(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"q": "two", "a": 2}\n\n   \n{"q": "pi ", "a": 3.5, "extra": null}\n', encoding="utf-8")
    cfg = DataConfig(source="jsonl", path=str(p), prompt_column="q", response_column="a")
    assert load_examples(cfg) == [{"prompt": "two", "response": "2"}, {"prompt": "pi", "response": "3.5"}]


def test_jsonl_text_mode(tmp_path):
    p = _write_jsonl(tmp_path / "t.jsonl", [{"body": "  hello world \n"}, {"body": "x"}])
    cfg = DataConfig(source="jsonl", path=str(p), text_column="body")
    assert load_examples(cfg) == [{"text": "  hello world"}, {"text": "x"}]


def test_compressed_bom_and_other_separators_read_the_same(tmp_path):
    """What exports and spreadsheets write: a UTF-8 BOM, gzip/bz2/xz, ';' or tab separated csv."""
    import bz2
    import gzip
    import lzma

    want = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "plain.jsonl", PAIRS)))
    text = "\n".join(json.dumps(r) for r in PAIRS) + "\n"
    (tmp_path / "bom.jsonl").write_text(text, encoding="utf-8-sig")
    for name, opener in (("a.jsonl.gz", gzip.open), ("a.jsonl.bz2", bz2.open), ("a.jsonl.xz", lzma.open)):
        with opener(tmp_path / name, "wt", encoding="utf-8") as fh:
            fh.write(text)
    for name in ("bom.jsonl", "a.jsonl.gz", "a.jsonl.bz2", "a.jsonl.xz"):
        assert load_examples(_jsonl_cfg(tmp_path / name)) == want, name
    for name, sep in (("semi.csv", ";"), ("tab.tsv", "\t"), ("pipe.csv.gz", "|")):
        frame = pd.DataFrame(PAIRS)
        frame.to_csv(tmp_path / name, sep=sep, index=False, encoding="utf-8-sig")
        assert load_examples(DataConfig(source="csv", path=str(tmp_path / name))) == want, name
    from ranksweep.data import load_splits

    _, ev = load_splits(_jsonl_cfg(tmp_path / "plain.jsonl", eval_path=str(tmp_path / "a.jsonl.gz")))
    assert ev == want, "an eval file's reader is told by its extension under the compression suffix"
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"^data\.path: cannot read .*bad\.jsonl\.gz: Not a gzipped file"):
        load_examples(_jsonl_cfg(tmp_path / "bad.jsonl.gz"))


def test_csv_keeps_strings(tmp_path):
    p = tmp_path / "train.csv"
    pd.DataFrame({"q": ["a", "b", "NA"], "a": ["1.50", "", "x "]}).to_csv(p, index=False)
    cfg = DataConfig(source="csv", path=str(p), prompt_column="q", response_column="a")
    assert load_examples(cfg) == [
        {"prompt": "a", "response": "1.50"},
        {"prompt": "b", "response": ""},
        {"prompt": "NA", "response": "x"},
    ]


def test_parquet_numbers_and_subsample(tmp_path):
    p = tmp_path / "train.parquet"
    pd.DataFrame({"q": [f"w{i}" for i in range(50)], "a": list(range(50))}).to_parquet(p)
    cfg = DataConfig(source="parquet", path=str(p), prompt_column="q", response_column="a")
    ex = load_examples(cfg)
    assert len(ex) == 50 and ex[7] == {"prompt": "w7", "response": "7"}
    sub = load_examples(replace(cfg, max_examples=10))
    assert len(sub) == 10 and sub == load_examples(replace(cfg, max_examples=10))


def test_hub_local_save_to_disk(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"prompt": ["a", "b"], "response": ["A", "B"]})}
    ).save_to_disk(str(d))
    cfg = DataConfig(source="hub", path=str(d), split="train")
    assert load_examples(cfg) == [{"prompt": "a", "response": "A"}, {"prompt": "b", "response": "B"}]
    with pytest.raises(DataError, match="data.split.*'test'"):
        load_examples(replace(cfg, split="test"))


def test_hub_failure_is_wrapped(monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source="hub", path="org/name"))
    msg = str(err.value)
    assert msg.startswith("data.path") and "org/name" in msg and "ConnectionError" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- loading errors


def test_missing_file(tmp_path):
    p = tmp_path / "train.jsonl"
    with pytest.raises(DataError, match=r"^data\.path: file not found: .*train\.jsonl$"):
        load_examples(DataConfig(source="jsonl", path=str(p)))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match=r"data\.path: .* is a directory"):
        load_examples(DataConfig(source="csv", path=str(tmp_path)))


@pytest.mark.parametrize("source,name", [("jsonl", "e.jsonl"), ("csv", "e.csv"), ("parquet", "e.parquet")])
def test_empty_file(tmp_path, source, name):
    p = tmp_path / name
    p.write_text("")
    with pytest.raises(DataError, match=rf"data\.path: .*{name}.* empty|data\.path: no rows in {name}"):
        load_examples(DataConfig(source=source, path=str(p)))


def test_no_rows(tmp_path):
    j = tmp_path / "blank.jsonl"
    j.write_text("\n  \n")
    with pytest.raises(DataError, match=r"data\.path: no rows in blank\.jsonl"):
        load_examples(DataConfig(source="jsonl", path=str(j)))
    c = tmp_path / "header.csv"
    c.write_text("prompt,response\n")
    with pytest.raises(DataError, match=r"data\.path: no rows in header\.csv"):
        load_examples(DataConfig(source="csv", path=str(c)))


def test_malformed_jsonl_names_line(tmp_path):
    rows = [{"prompt": "a", "response": "b"}] * 5
    p = _write_jsonl(tmp_path / "train.jsonl", rows, raw_lines=["", '{"prompt": "a" "response": "b"}'])
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source="jsonl", path=str(p)))
    assert str(err.value) == "data.path: train.jsonl line 7: invalid JSON (Expecting ',' delimiter)"


def test_non_object_jsonl_line(tmp_path):
    p = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}, ["a", "b"]])
    with pytest.raises(DataError, match=r"data\.path: train\.jsonl line 2: expected a JSON object, got list"):
        load_examples(DataConfig(source="jsonl", path=str(p)))


def test_missing_column_csv(tmp_path):
    p = tmp_path / "train.csv"
    pd.DataFrame({"q": ["x"], "a": ["y"]}).to_csv(p, index=False)
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source="csv", path=str(p), prompt_column="question", response_column="a"))
    assert str(err.value) == "data.prompt_column: column 'question' not in train.csv; columns are: q, a"


def test_missing_column_jsonl_and_text_column(tmp_path):
    p = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"data\.response_column: column 'response' not in train\.jsonl line 2"):
        load_examples(DataConfig(source="jsonl", path=str(p)))
    with pytest.raises(DataError, match=r"data\.text_column: column 'body' not in train\.jsonl"):
        load_examples(DataConfig(source="jsonl", path=str(p), text_column="body"))


def test_null_and_non_string_values(tmp_path):
    p = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": None, "response": "b"}])
    with pytest.raises(DataError, match=r"data\.prompt_column: .*train\.jsonl line 2 is missing"):
        load_examples(DataConfig(source="jsonl", path=str(p)))
    p2 = _write_jsonl(tmp_path / "list.jsonl", [{"prompt": "a", "response": ["b"]}])
    with pytest.raises(DataError, match=r"data\.response_column: .*list\.jsonl line 1 is a list"):
        load_examples(DataConfig(source="jsonl", path=str(p2)))
    pq = tmp_path / "nulls.parquet"
    pd.DataFrame({"prompt": ["a", "b", None], "response": ["x", "y", "z"]}).to_parquet(pq)
    with pytest.raises(DataError, match=r"data\.prompt_column: .*nulls\.parquet row 3 is missing"):
        load_examples(DataConfig(source="parquet", path=str(pq)))


def test_unreadable_parquet_and_csv(tmp_path):
    pq = tmp_path / "bad.parquet"
    pq.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=r"data\.path: cannot read parquet bad\.parquet"):
        load_examples(DataConfig(source="parquet", path=str(pq)))
    c = tmp_path / "bad.csv"
    c.write_text('prompt,response\n"a,b\n')
    with pytest.raises(DataError, match=r"data\.path: cannot read csv bad\.csv"):
        load_examples(DataConfig(source="csv", path=str(c)))


# --------------------------------------------------------------------------- splitting


def test_split_sizes_and_determinism():
    tr, ev = split_examples(PAIRS, 0.25, seed=1)
    assert (len(tr), len(ev)) == (15, 5)
    assert split_examples(PAIRS, 0.25, seed=1) == (tr, ev)
    assert split_examples(PAIRS, 0.25, seed=2) != (tr, ev)
    assert sorted(e["prompt"] for e in tr + ev) == sorted(e["prompt"] for e in PAIRS)
    tr, ev = split_examples(PAIRS, 3, seed=0)
    assert (len(tr), len(ev)) == (17, 3)
    tr, ev = split_examples(PAIRS, 0.001, seed=0)  # a tiny fraction still gives one eval example
    assert (len(tr), len(ev)) == (19, 1)


@pytest.mark.parametrize("eval_size", [20, 50, 1.0 * 25])
def test_split_needs_both_sides(eval_size):
    with pytest.raises(DataError, match=r"data\.eval_size"):
        split_examples(PAIRS, eval_size, seed=0)


def test_split_single_example():
    with pytest.raises(DataError, match=r"data\.eval_size"):
        split_examples(PAIRS[:1], 0.5, seed=0)


# --------------------------------------------------------------------------- formatting


def test_format_base(tok):
    cfg = DataConfig(instruction="Say: ", template="{instruction}{prompt}\n")
    assert format_pair({"prompt": "hi", "response": "HI"}, tok, "base", cfg) == ("Say: hi\n", "HI</s>")


def test_format_instruct_uses_chat_template(tok):
    cfg = DataConfig(instruction="Say: ")
    prompt, response = format_pair({"prompt": "hi", "response": "HI"}, tok, "instruct", cfg)
    assert prompt == "<|im_start|>user\nSay: hi<|im_end|>\n<|im_start|>assistant\n"
    assert response == "HI<|im_end|>\n"


def test_format_instruct_without_template_falls_back(tok_plain):
    cfg = DataConfig(instruction="Say: ")
    pair = format_pair({"prompt": "hi", "response": "HI"}, tok_plain, "instruct", cfg)
    assert pair == ("Say: hi\n", "HI</s>")


def test_format_text_mode(tok):
    assert format_pair({"text": "abc"}, tok, "instruct", DataConfig()) == ("", "abc</s>")


def test_format_bad_template(tok):
    with pytest.raises(DataError, match="data.template"):
        format_pair({"prompt": "a", "response": "b"}, tok, "base", DataConfig(template="{question}"))


# --------------------------------------------------------------------------- tokenising


def _check_rows(ds, tok, expected_responses):
    assert set(ds.column_names) == {"input_ids", "attention_mask", "labels", "prompt_ids", "response"}
    for row, expected in zip(ds, expected_responses):
        ids, labels, prompt_ids = row["input_ids"], row["labels"], row["prompt_ids"]
        assert len(ids) == len(labels) == len(row["attention_mask"])
        assert all(m == 1 for m in row["attention_mask"])
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids
        assert labels[:n] == [IGNORE_INDEX] * n
        assert labels[n:] == ids[n:] and IGNORE_INDEX not in labels[n:]
        assert tok.decode(labels[n:]) == expected
    return ds


def test_tokenize_base_masks_prompt(tok):
    cfg = DataConfig(instruction="Say: ")
    ex = PAIRS[:4]
    ds = tokenize_examples(ex, tok, "base", cfg, max_seq_len=64)
    _check_rows(ds, tok, [e["response"] + "</s>" for e in ex])
    row = ds[0]
    assert row["prompt_ids"][0] == tok.bos_token_id  # the BOS the tokenizer normally adds, once
    assert row["input_ids"].count(tok.bos_token_id) == 1
    assert tok.decode(row["prompt_ids"]) == "<s>Say: word0\n"
    assert row["response"] == "W 0 R"


def test_tokenize_base_without_bos(tok_plain):
    ds = tokenize_examples(PAIRS[:2], tok_plain, "base", DataConfig(), max_seq_len=64)
    _check_rows(ds, tok_plain, ["W 0 R</s>", "W 1 R</s>"])
    assert tok_plain.decode(ds[0]["prompt_ids"]) == "word0\n"


def test_tokenize_instruct_masks_prompt(tok):
    ds = tokenize_examples(PAIRS[:3], tok, "instruct", DataConfig(), max_seq_len=128)
    _check_rows(ds, tok, [e["response"] + "<|im_end|>\n" for e in PAIRS[:3]])
    prompt = tok.decode(ds[0]["prompt_ids"])
    assert prompt == "<|im_start|>user\nword0<|im_end|>\n<|im_start|>assistant\n"
    assert tok.bos_token_id not in ds[0]["input_ids"]  # chat templates carry their own specials


def test_tokenize_text_mode(tok):
    ex = [{"text": "hello"}, {"text": "ab cd "}]
    ds = tokenize_examples(ex, tok, "base", DataConfig(text_column="t"), max_seq_len=64)
    _check_rows(ds, tok, ["hello</s>", "ab cd </s>"])
    assert ds[0]["prompt_ids"] == [tok.bos_token_id]
    assert ds["response"] == ["hello", "ab cd"]


def test_truncation_keeps_prompt_cuts_response(tok):
    ex = [{"prompt": "abc", "response": "0123456789"}]
    ds = tokenize_examples(ex, tok, "base", DataConfig(), max_seq_len=8)
    row = ds[0]
    assert len(row["input_ids"]) == 8
    assert tok.decode(row["prompt_ids"]) == "<s>abc\n"
    assert tok.decode(row["labels"][5:]) == "012"
    assert row["response"] == "0123456789"


def test_truncation_long_prompt_keeps_one_response_token(tok):
    ex = [{"prompt": "abcdefghij", "response": "XYZ"}]
    ds = tokenize_examples(ex, tok, "base", DataConfig(), max_seq_len=5)
    row = ds[0]
    assert len(row["input_ids"]) == 5
    assert tok.decode(row["prompt_ids"]) == "<s>ij\n"  # cut from the left, BOS kept
    assert [t for t in row["labels"] if t != IGNORE_INDEX] == [tok.convert_tokens_to_ids("X")]
    ds1 = tokenize_examples(ex, tok, "base", DataConfig(), max_seq_len=1)
    assert ds1[0]["input_ids"] == [tok.convert_tokens_to_ids("X")] and ds1[0]["prompt_ids"] == []


def test_empty_responses_dropped_and_all_dropped_is_error(tok_plain):
    ex = [{"prompt": "a", "response": ""}, {"prompt": "b", "response": "B"}]
    tok_noeos = _char_tokenizer(add_bos=False, chat_template=None)
    tok_noeos.eos_token = None
    ds = tokenize_examples(ex, tok_noeos, "base", DataConfig(), max_seq_len=16)
    assert ds["response"] == ["B"]
    with pytest.raises(DataError, match=r"trainer\.max_seq_len"):
        tokenize_examples(ex[:1], tok_noeos, "base", DataConfig(), max_seq_len=16)


def test_cache_hit_and_misses(tok, tmp_path):
    cfg = DataConfig(instruction="Say: ")
    first = tokenize_examples(PAIRS, tok, "base", cfg, 64, cache_dir=str(tmp_path))
    entries = list((tmp_path / "tokenized").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    again = tokenize_examples(PAIRS, tok, "base", cfg, 64, cache_dir=str(tmp_path))
    assert again.to_dict() == first.to_dict()
    assert again.cache_files and str(entries[0]) in again.cache_files[0]["filename"]  # loaded from the cache

    tokenize_examples(PAIRS, tok, "base", replace(cfg, template="Q: {instruction}{prompt}\nA: "), 64,
                      cache_dir=str(tmp_path))
    tokenize_examples(PAIRS, tok, "base", cfg, 32, cache_dir=str(tmp_path))
    tokenize_examples(PAIRS, tok, "instruct", cfg, 64, cache_dir=str(tmp_path))
    tokenize_examples(PAIRS[:-1], tok, "base", cfg, 64, cache_dir=str(tmp_path))
    names = [p.name for p in (tmp_path / "tokenized").iterdir()]
    assert len(names) == 5 and not any(n.startswith(".") for n in names)


# --------------------------------------------------------------------------- collating and scoring


def test_collator_pads_right(tok):
    ds = tokenize_examples([{"prompt": "a", "response": "b"}, {"prompt": "abcd", "response": "efgh"}],
                           tok, "base", DataConfig(), 64)
    batch = CausalCollator(tok)([ds[0], ds[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 11) and batch["input_ids"].dtype == torch.long
    n0 = len(ds[0]["input_ids"])
    assert batch["input_ids"][0, n0:].tolist() == [tok.pad_token_id] * (11 - n0)
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (11 - n0)
    assert batch["labels"][0, n0:].tolist() == [IGNORE_INDEX] * (11 - n0)
    assert batch["labels"][1].tolist() == ds[1]["labels"]

    padded = CausalCollator(tok, pad_to_multiple_of=8)([ds[0], ds[1]])
    assert padded["input_ids"].shape == (2, 16)


def test_collator_pad_falls_back_to_eos():
    tok = _char_tokenizer()
    tok.pad_token = None
    ds = tokenize_examples([{"prompt": "a", "response": "b"}, {"prompt": "ab", "response": "c"}],
                           tok, "base", DataConfig(), 64)
    batch = CausalCollator(tok)(list(ds))
    assert batch["input_ids"][0, -1].item() == tok.eos_token_id


def test_exact_match():
    assert exact_match(["AH0  B\n", "x", "Y"], ["AH0 B", "x", "y"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


# --------------------------------------------------------------------------- conversations and other formats

CHAT = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "HI"},
    {"role": "user", "content": "two"},
    {"role": "assistant", "content": "TWO 2"},
]


def _chatml(role: str, content: str) -> tuple[str, str]:
    """One ChatML turn as (untrained head, body): the body of an assistant turn is what is trained."""
    return f"<|im_start|>{role}\n", f"{content}<|im_end|>\n"


def _expected(tok, messages, trained_from: int = 0, bos: bool = False):
    """ids and labels built here turn by turn from ChatML's definition (not from the chat template)."""
    ids, labels = ([tok.bos_token_id], [IGNORE_INDEX]) if bos else ([], [])
    for i, m in enumerate(messages):
        head, body = _chatml(m["role"], m["content"])
        h = tok(head, add_special_tokens=False)["input_ids"]
        b = tok(body, add_special_tokens=False)["input_ids"]
        train = m["role"] == "assistant" and i >= trained_from
        ids += h + b
        labels += [IGNORE_INDEX] * len(h) + (b if train else [IGNORE_INDEX] * len(b))
    return ids, labels


def _jsonl_cfg(path, **kw):
    return DataConfig(source="jsonl", path=str(path), **kw)


def test_messages_multi_turn_labels_assistant_tokens_only(tok, tmp_path):
    p = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    cfg = _jsonl_cfg(p, system_prompt="Be brief.")
    (ex,) = load_examples(cfg)
    assert ex["messages"] == CHAT and ex["train_from"] == 0 and ex["where"] == "data.path: chat.jsonl line 1"
    row = tokenize_examples([ex], tok, "instruct", cfg, max_seq_len=256)[0]
    want_ids, want_labels = _expected(tok, [{"role": "system", "content": "Be brief."}, *CHAT])
    assert row["input_ids"] == want_ids
    assert row["labels"] == want_labels  # token by token: both assistant turns, nothing else
    trained = tok.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert trained == "HI<|im_end|>\nTWO 2<|im_end|>\n"
    # Generation (exact match) starts from everything before the last assistant turn.
    assert tok.decode(row["prompt_ids"]) == tok.decode(want_ids).rsplit("TWO 2", 1)[0]
    assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert row["response"] == "TWO 2"


def test_conversation_keeps_its_own_system_turn(tok):
    convo = [{"role": "system", "content": "Mine."}, *CHAT[:2]]
    ex = {"messages": convo, "train_from": 0}
    row = tokenize_examples([ex], tok, "instruct", DataConfig(system_prompt="Not used."), 256)[0]
    assert (row["input_ids"], row["labels"]) == _expected(tok, convo)


def test_sharegpt_equals_messages(tok, tmp_path):
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    share = [{"from": names[m["role"]], "value": m["content"]} for m in CHAT]
    a = _write_jsonl(tmp_path / "share.jsonl", [{"conversations": share, "id": 1}])
    b = _write_jsonl(tmp_path / "msgs.jsonl", [{"messages": CHAT}])
    ex_a, ex_b = load_examples(_jsonl_cfg(a)), load_examples(_jsonl_cfg(b))
    assert [e["messages"] for e in ex_a] == [e["messages"] for e in ex_b]
    explicit = load_examples(_jsonl_cfg(a, format="sharegpt"))
    assert explicit[0]["messages"] == CHAT
    rows_a = tokenize_examples(ex_a, tok, "instruct", DataConfig(), 256)
    rows_b = tokenize_examples(ex_b, tok, "instruct", DataConfig(), 256)
    assert rows_a.to_dict() == rows_b.to_dict()


def test_prompt_completion_conversational_trains_the_completion_only(tok, tmp_path):
    p = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": CHAT[:3], "completion": CHAT[3:]}])
    (ex,) = load_examples(_jsonl_cfg(p))
    assert ex["train_from"] == 3
    row = tokenize_examples([ex], tok, "instruct", DataConfig(), 256)[0]
    assert (row["input_ids"], row["labels"]) == _expected(tok, CHAT, trained_from=3)
    assert row["response"] == "TWO 2"


def test_prompt_completion_text_is_concatenated_without_template(tok, tmp_path):
    p = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    (ex,) = load_examples(_jsonl_cfg(p))
    assert ex == {"prompt": "The sky is", "completion": " blue."}
    row = tokenize_examples([ex], tok, "instruct", DataConfig(), 64)[0]
    assert tok.decode(row["input_ids"]) == "<s>The sky is blue.</s>"
    assert tok.decode([t for t in row["labels"] if t != IGNORE_INDEX]) == " blue.</s>"
    assert tok.decode(row["prompt_ids"]) == "<s>The sky is" and row["response"] == "blue."


def test_alpaca_rows_train_the_output_only(tok, tmp_path):
    """axolotl's / LLaMA-Factory's alpaca: instruction, optional input and system, output; checked token by token."""
    rows = [{"instruction": "Reverse.", "input": "abc", "output": "cba"},
            {"instruction": "Say hi.", "output": "hi", "system": "Be brief."},
            {"instruction": "Echo.", "input": "", "output": "x"}]
    p = _write_jsonl(tmp_path / "alpaca.jsonl", rows)
    got = load_examples(_jsonl_cfg(p))  # told apart from the columns
    assert got == [{"prompt": "Reverse.\n\nabc", "response": "cba"},
                   {"prompt": "Say hi.", "response": "hi", "system": "Be brief."},
                   {"prompt": "Echo.", "response": "x"}]
    assert load_examples(_jsonl_cfg(p, format="alpaca")) == got
    first, second, _ = tokenize_examples(got, tok, "instruct", DataConfig(), 256)
    assert (first["input_ids"], first["labels"]) == _expected(
        tok, [{"role": "user", "content": "Reverse.\n\nabc"}, {"role": "assistant", "content": "cba"}])
    assert (second["input_ids"], second["labels"]) == _expected(
        tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
              {"role": "assistant", "content": "hi"}])
    pd.DataFrame(rows).drop(columns=["system"]).to_parquet(tmp_path / "a.parquet")
    from_parquet = load_examples(DataConfig(source="parquet", path=str(tmp_path / "a.parquet")))
    assert from_parquet == [{k: v for k, v in e.items() if k != "system"} for e in got]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": None}])
    with pytest.raises(DataError, match=r"^data.format: column 'output' in bad.jsonl line 1 is missing \(null\)$"):
        load_examples(_jsonl_cfg(bad))


def test_a_json_array_file_reads_like_json_lines(tmp_path):
    """LLaMA-Factory's datasets and many exports are one JSON array, not JSON lines."""
    (tmp_path / "d.json").write_text(json.dumps(PAIRS, indent=2), encoding="utf-8")
    lines = _write_jsonl(tmp_path / "d.jsonl", PAIRS)
    assert load_examples(_jsonl_cfg(tmp_path / "d.json")) == load_examples(_jsonl_cfg(lines))
    (tmp_path / "e.json").write_text(json.dumps([PAIRS[0], 3]), encoding="utf-8")
    with pytest.raises(DataError, match=r"^data.path: e.json item 2: expected a JSON object, got int$"):
        load_examples(_jsonl_cfg(tmp_path / "e.json"))
    (tmp_path / "f.json").write_text('[{"prompt": "a",\n "response": "b"},,]', encoding="utf-8")
    with pytest.raises(DataError, match=r"^data.path: f.json line 2: invalid JSON"):
        load_examples(_jsonl_cfg(tmp_path / "f.json"))
    (tmp_path / "g.json").write_text(json.dumps([{"prompt": "a", "response": "b"}, {"prompt": "c"}]))
    with pytest.raises(DataError, match=r"^data.response_column: column 'response' not in g.json item 2"):
        load_examples(_jsonl_cfg(tmp_path / "g.json"))


@pytest.mark.parametrize("how", ["base", "no_template"])
def test_plain_template_for_base_models(tok, tok_plain, how):
    """Base models (and tokenizers without a chat template): the documented plain template."""
    tokenizer, variant = (tok, "base") if how == "base" else (tok_plain, "instruct")
    eos = tokenizer.eos_token
    ex = {"messages": CHAT, "train_from": 0}
    row = tokenize_examples([ex], tokenizer, variant, DataConfig(system_prompt="Be brief."), 256)[0]
    text = ("### System:\nBe brief.\n\n### User:\nhi\n\n### Assistant:\nHI" + eos + "\n\n"
            "### User:\ntwo\n\n### Assistant:\nTWO 2" + eos + "\n\n")
    bos = [tokenizer.bos_token_id] if how == "base" else []  # `tok` adds a BOS like Llama's tokenizers
    assert row["input_ids"] == bos + tokenizer(text, add_special_tokens=False)["input_ids"]
    labelled = [i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX]
    spans = []  # token by token: exactly the two assistant bodies with their EOS
    for body in ("HI" + eos, "TWO 2" + eos):
        start = len(bos) + len(tokenizer(text[: text.index(body)], add_special_tokens=False)["input_ids"])
        spans += range(start, start + len(tokenizer(body, add_special_tokens=False)["input_ids"]))
    assert labelled == spans
    assert all(row["labels"][i] == row["input_ids"][i] for i in labelled)
    assert tokenizer.decode(row["prompt_ids"]).endswith("### User:\ntwo\n\n### Assistant:\n")


def test_multi_turn_truncation_keeps_the_first_turns(tok):
    ex = {"messages": CHAT, "train_from": 0}
    full = tokenize_examples([ex], tok, "instruct", DataConfig(), 256)[0]
    cut = tokenize_examples([ex], tok, "instruct", DataConfig(), 30)[0]
    assert cut["input_ids"] == full["input_ids"][:30] and cut["labels"] == full["labels"][:30]
    assert any(t != IGNORE_INDEX for t in cut["labels"])


def test_template_rewriting_history_trains_the_last_turn(tok):
    """A template that drops earlier assistant turns' text (as reasoning templates do): last turn only."""
    rewriting = _char_tokenizer(chat_template=(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
    row = tokenize_examples([{"messages": CHAT, "train_from": 0}], rewriting, "instruct", DataConfig(), 256)[0]
    assert rewriting.decode([t for t in row["labels"] if t != IGNORE_INDEX]) == "TWO 2<|im_end|>\n"
    assert "..." in rewriting.decode(row["prompt_ids"])


BAD_ROWS = [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "messages[1].role must be one of system, user, assistant, tool; got 'bot'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
     "messages[1].content must be text; got null"),
    ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]},
     "messages[1] has no 'role'; its keys are: content"),
    ({"messages": [{"role": "user", "content": "a"}]}, "messages has no assistant turn to train on"),
    ({"messages": []}, "messages must be a non-empty list of messages; got an empty list"),
    ({"messages": "hello"}, "messages must be a non-empty list of messages; got a str"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "b"}]}, "messages[1]: a system turn must come first"),
    ({"messages": [{"role": "assistant", "content": "b"}]},
     "messages: the first turn after the system turn must be the user's, got 'assistant'"),
    ({"messages": ["hi"]}, "messages[0] must be an object with 'role' and 'content'; got a str"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "b"}]},
     'messages[0].content[0]: only text parts ({"type": "text", "text": ...}) can be trained; '
     "got a part of type 'image_url'"),
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
     'messages[0].content[0]: only text parts ({"type": "text", "text": ...}) can be trained; got a str'),
]


def test_text_content_parts_are_the_same_as_text(tok, tmp_path):
    """OpenAI's content parts: [{"type": "text", "text": ...}] rows train exactly as their joined text."""
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"][:2]},
                                            {"type": "text", "text": m["content"][2:]}]} for m in CHAT]
    a = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "parts.jsonl", [{"messages": parts}])))
    b = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "text.jsonl", [{"messages": CHAT}])))
    assert [e["messages"] for e in a] == [e["messages"] for e in b] == [CHAT]
    rows = [tokenize_examples(x, tok, "instruct", DataConfig(), 256).to_dict() for x in (a, b)]
    assert rows[0] == rows[1]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_bad_conversation_row_is_one_line(tmp_path, bad, message):
    rows = [{"messages": CHAT}] * 6 + [bad]
    p = _write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_examples(_jsonl_cfg(p))
    assert str(err.value) == f"data.path: chat.jsonl line 7: {message}"


def test_bad_sharegpt_and_prompt_completion_rows(tmp_path):
    share = _write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "a"},
                                                                    {"from": "bot", "value": "b"}]}])
    with pytest.raises(DataError) as err:
        load_examples(_jsonl_cfg(share))
    assert str(err.value) == ("data.path: s.jsonl line 1: conversations[1].from must be one of "
                              "system, human, gpt, function_call, observation (or user, assistant, tool); got 'bot'")
    pc = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": CHAT[:1], "completion": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match=r"^data\.path: pc\.jsonl line 1: completion has no assistant turn"):
        load_examples(_jsonl_cfg(pc))
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "completion": CHAT[1:2]}])
    with pytest.raises(DataError, match=r"^data\.path: mixed\.jsonl line 1: prompt must be a non-empty list"):
        load_examples(_jsonl_cfg(mixed))
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(DataError) as err:
        load_examples(_jsonl_cfg(pairs, format="messages"))
    assert str(err.value) == "data.format: column 'messages' not in pairs.jsonl line 1; columns are: prompt, response"


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "a city's weather", "parameters": SCHEMA}}]
TOOL_CHAT = [
    {"role": "user", "content": "Rain in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    {"role": "assistant", "content": "Yes, rain."},
]
CALL = '{"name": "weather", "arguments": {"city": "Oslo"}}'
# A template that renders tool use, in the way of Qwen 2.5's and Llama 3.1's (tools in the system turn,
# calls as JSON in the assistant turn, results in a tool turn).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}<call>{{ c['function']['name'] }} {{ c['function']['arguments'] | tojson }}"
    "</call>{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _trained(tokenizer, row) -> list[str]:
    """The trained spans of a tokenised row, as text."""
    spans, cur = [], []
    for t, lab in zip(row["input_ids"], row["labels"]):
        if lab != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            spans, cur = spans + [tokenizer.decode(cur)], []
    return spans + ([tokenizer.decode(cur)] if cur else [])


def test_tool_calls_are_trained_and_tool_results_are_not(tok, tmp_path):
    """OpenAI's tool use. ChatML prints only content, so the call goes in as a JSON line and the tools
    as JSON lines in the system turn; token by token against ChatML's definition."""
    p = _write_jsonl(tmp_path / "tools.jsonl", [{"messages": TOOL_CHAT, "tools": json.dumps(TOOLS)}])
    (ex,) = load_examples(_jsonl_cfg(p))
    assert ex["tools"] == TOOLS and ex["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert ex["messages"][1]["content"] == "" and ex["messages"][2]["tool_call_id"] == "c1"
    row = tokenize_examples([ex], tok, "instruct", DataConfig(), 512)[0]
    shown = [{"role": "system", "content": "Tools:\n" + json.dumps(TOOLS[0])}, TOOL_CHAT[0],
             {"role": "assistant", "content": CALL}, {"role": "tool", "content": "rain"}, TOOL_CHAT[3]]
    assert (row["input_ids"], row["labels"]) == _expected(tok, shown)
    assert _trained(tok, row) == [CALL + "<|im_end|>\n", "Yes, rain.<|im_end|>\n"]


def test_a_template_that_renders_tool_use_gets_it_as_is(tmp_path):
    aware = _char_tokenizer(chat_template=TOOL_TEMPLATE)
    p = _write_jsonl(tmp_path / "tools.jsonl", [{"messages": TOOL_CHAT, "tools": TOOLS}])
    (ex,) = load_examples(_jsonl_cfg(p))
    row = tokenize_examples([ex], aware, "instruct", DataConfig(), 512)[0]
    assert aware.decode(row["input_ids"]) == aware.apply_chat_template(ex["messages"], tools=TOOLS, tokenize=False)
    assert aware.decode(row["input_ids"]).startswith("<|im_start|>system\nTOOLS: weather<|im_end|>")
    assert _trained(aware, row) == ['<call>weather {"city": "Oslo"}</call><|im_end|>\n', "Yes, rain.<|im_end|>\n"]


def test_plain_template_and_sharegpt_tool_turns(tok, tok_plain, tmp_path):
    """LLaMA-Factory's function_call / observation turns are the same conversation; the plain template
    shows the tool turn under its own header, untrained."""
    share = [{"from": "human", "value": "Rain in Oslo?"}, {"from": "function_call", "value": CALL},
             {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "Yes, rain."}]
    a = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "s.jsonl", [{"conversations": share, "tools": TOOLS}])))
    b = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "m.jsonl", [{"messages": TOOL_CHAT, "tools": TOOLS}])))
    as_object = [*TOOL_CHAT[:2], {"role": "tool", "content": {"sky": "rain"}}, TOOL_CHAT[3]]
    c = load_examples(_jsonl_cfg(_write_jsonl(tmp_path / "o.jsonl", [{"messages": as_object}])))
    assert c[0]["messages"][2] == {"role": "tool", "content": '{"sky": "rain"}'}  # a result object, as its JSON
    strip = [{k: v for k, v in m.items() if k not in ("tool_call_id",)} for m in b[0]["messages"]]
    strip[1]["tool_calls"] = [{k: v for k, v in c.items() if k != "id"} for c in strip[1]["tool_calls"]]
    assert a[0]["messages"] == strip and a[0]["tools"] == b[0]["tools"]
    row = tokenize_examples(a, tok_plain, "instruct", DataConfig(), 512)[0]
    eos = tok_plain.eos_token
    assert tok_plain.decode(row["input_ids"]) == (
        "### System:\nTools:\n" + json.dumps(TOOLS[0]) + "\n\n### User:\nRain in Oslo?\n\n### Assistant:\n"
        + CALL + eos + "\n\n### Tool:\nrain\n\n### Assistant:\nYes, rain." + eos + "\n\n")
    assert _trained(tok_plain, row) == [CALL + eos, "Yes, rain." + eos]


TOOL_ROWS = [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"},
                   {"role": "assistant", "content": "b"}]},
     "messages[1]: a tool turn must follow an assistant turn (its call)"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
     'messages[1].tool_calls[0] must be a call with a function name ({"type": "function", "function": '
     '{"name": ..., "arguments": {...}}})'),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": "weather()"}]},
     "messages[1].tool_calls must be a list of calls; got a str"),
    ({"messages": CHAT, "tools": "[{"}, "tools: invalid JSON (Expecting property name enclosed in double quotes)"),
    ({"messages": CHAT, "tools": [1]}, "tools must be a list of function schemas; got a list"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "weather("}]},
     "conversations[1].value: a function_call's value must be the call's JSON (Expecting value)"),
]


@pytest.mark.parametrize(("bad", "message"), TOOL_ROWS)
def test_bad_tool_rows_are_one_line(tmp_path, bad, message):
    column = "conversations" if "conversations" in bad else "messages"
    good = {column: CHAT if column == "messages" else [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    p = _write_jsonl(tmp_path / "t.jsonl", [good] * 3 + [bad])
    with pytest.raises(DataError) as err:
        load_examples(_jsonl_cfg(p))
    assert str(err.value) == f"data.path: t.jsonl line 4: {message}"


def test_formats_from_csv_parquet_and_hub(tmp_path):
    """Nested message lists from parquet (numpy arrays) and a save_to_disk folder; JSON text from csv."""
    import datasets

    frame = pd.DataFrame({"messages": [CHAT, CHAT[:2]]})
    frame.to_parquet(tmp_path / "chat.parquet")
    got = load_examples(DataConfig(source="parquet", path=str(tmp_path / "chat.parquet")))
    assert [e["messages"] for e in got] == [CHAT, CHAT[:2]] and got[1]["where"] == "data.path: chat.parquet row 2"
    pd.DataFrame({"messages": [json.dumps(CHAT)]}).to_csv(tmp_path / "chat.csv", index=False)
    assert load_examples(DataConfig(source="csv", path=str(tmp_path / "chat.csv")))[0]["messages"] == CHAT
    datasets.Dataset.from_dict({"text": ["ab", "cd"]}).save_to_disk(str(tmp_path / "text"))
    assert load_examples(DataConfig(source="hub", path=str(tmp_path / "text"))) == [{"text": "ab"}, {"text": "cd"}]


# --------------------------------------------------------------------------- held-out eval set


def test_eval_path_is_used_as_given(tmp_path):
    from ranksweep.data import load_splits

    train = _write_jsonl(tmp_path / "train.jsonl", PAIRS)
    evals = pd.DataFrame({"prompt": ["e1", "e2", "e3"], "response": ["E1", "E2", "E3"]})
    evals.to_csv(tmp_path / "ev.csv", index=False)
    tr, ev = load_splits(_jsonl_cfg(train, eval_path=str(tmp_path / "ev.csv"), eval_size=5))
    assert tr == load_examples(_jsonl_cfg(train)), "the training data is not split"
    assert ev == [{"prompt": f"e{i}", "response": f"E{i}"} for i in (1, 2, 3)], "in the file's order"
    tr2, ev2 = load_splits(_jsonl_cfg(train, eval_size=5))
    assert (len(tr2), len(ev2)) == (15, 5), "without it: the seeded split"

    chat = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    bad = _write_jsonl(tmp_path / "bad_eval.jsonl", [{"messages": CHAT}, {"messages": [{"role": "x", "content": ""}]}])
    with pytest.raises(DataError) as err:
        load_splits(_jsonl_cfg(chat, eval_path=str(bad)))
    assert str(err.value) == ("data.eval_path: bad_eval.jsonl line 2: messages[0].role must be one of "
                              "system, user, assistant, tool; got 'x'")
    with pytest.raises(DataError, match=r"^data\.eval_path: file not found"):
        load_splits(_jsonl_cfg(chat, eval_path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match=r"^data\.format: column 'messages' not in ev\.csv"):
        load_splits(_jsonl_cfg(chat, eval_path=str(tmp_path / "ev.csv")))  # the training data's format


def test_eval_split_of_a_saved_dataset_dict(tmp_path):
    import datasets

    from ranksweep.data import load_splits

    d = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"messages": [CHAT] * 4}),
        "test": datasets.Dataset.from_dict({"messages": [CHAT[:2]] * 2}),
    }).save_to_disk(str(d))
    cfg = DataConfig(source="hub", path=str(d), eval_split="test")
    tr, ev = load_splits(cfg)
    assert len(tr) == 4 and [e["messages"] for e in ev] == [CHAT[:2]] * 2
    with pytest.raises(DataError, match=r"^data\.eval_split: split 'dev' not in saved; splits are: train, test"):
        load_splits(replace(cfg, eval_split="dev"))


def test_data_config_checks():
    from ranksweep.errors import ConfigError

    def bad(match, **kw):
        with pytest.raises(ConfigError, match=match):
            DataConfig(**{"source": "jsonl", "path": "x.jsonl", **kw}).validate()

    bad(r"^data\.format must be one of auto, pairs, text, messages, sharegpt, prompt_completion, alpaca; got 'chat'",
        format="chat")
    bad(r"^data\.eval_path=e\.jsonl and data\.eval_split=test are both set", eval_path="e.jsonl", eval_split="test")
    bad(r"^data\.eval_split=test names a split of a hub dataset, but data\.source=jsonl", eval_split="test")
    bad(r"^data\.text_column=t reads raw text, but data\.format=messages", text_column="t", format="messages")
    DataConfig(source="jsonl", path="x.jsonl", format="sharegpt", messages_column="conv").validate()
