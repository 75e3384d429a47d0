"""Malformed data content: nesting too deep, bad Unicode (lone surrogates, undecodable bytes), control
characters, a line too long to be a row. Each is a one-line DataError naming the config key, the file,
the line / item / row and the field, for every source (jsonl, a .json array, csv, parquet, a hub
save_to_disk folder); good data loads as before.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers.run import ranksweep

from ranksweep.config import DataConfig
from ranksweep.data import load as load_module
from ranksweep.data import load_examples, load_splits
from ranksweep.errors import DataError

PAIR = {"prompt": "word", "response": "W O R D"}
GOOD = json.dumps(PAIR)
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
DEEP = "[" * 100_000 + "]" * 100_000


def _chat(content: str) -> list[dict[str, str]]:
    return [*CHAT, {"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]


def _write(path: Path, text: str | bytes) -> Path:
    """``text`` as UTF-8 (lone surrogates written as JSON escapes stay ASCII), compressed by suffix."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    opener = {".gz": gzip.compress, ".bz2": bz2.compress}.get(path.suffix)
    path.write_bytes(opener(data) if opener else data)
    return path


def _error(source: str, path: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source=source, path=str(path), **kw))
    message = str(err.value)
    assert "\n" not in message
    message.encode("ascii")  # printable anywhere: bad characters are named, never echoed
    return message


# --------------------------------------------------------------------------- nesting


def test_deep_nesting_in_jsonl_names_the_line(tmp_path):
    p = _write(tmp_path / "deep.jsonl", f'{GOOD}\n{GOOD}\n{{"prompt": {DEEP}, "response": "x"}}\n')
    assert _error("jsonl", p) == "data.path: deep.jsonl line 3: the row is nested deeper than 64 levels"


def test_deep_nesting_in_a_json_array_names_the_item(tmp_path):
    p = _write(tmp_path / "deep.json", f'[{GOOD},\n {GOOD},\n {{"prompt": "a", "response": {DEEP}}}]')
    assert _error("jsonl", p) == "data.path: deep.json item 3: the row is nested deeper than 64 levels"


def test_nesting_past_the_limit_but_under_the_recursion_limit(tmp_path):
    """65 levels parse (no RecursionError) but are refused; 64 load."""
    def row(levels: int) -> str:  # the row itself is one level
        return json.dumps({**PAIR, "meta": json.loads("[" * (levels - 1) + "]" * (levels - 1))})

    ok = _write(tmp_path / "ok.jsonl", f"{GOOD}\n{row(64)}\n")
    assert len(load_examples(DataConfig(source="jsonl", path=str(ok)))) == 2
    p = _write(tmp_path / "d.jsonl", f"{GOOD}\n{row(65)}\n")
    assert _error("jsonl", p) == "data.path: d.jsonl line 2: meta is nested deeper than 64 levels"
    assert load_module.MAX_DEPTH == 64


def test_deep_json_text_in_a_csv_cell(tmp_path):
    p = tmp_path / "deep.csv"
    pd.DataFrame({"messages": [json.dumps(CHAT), DEEP]}).to_csv(p, index=False)
    assert _error("csv", p) == "data.path: deep.csv row 2: messages is nested deeper than 64 levels"


# --------------------------------------------------------------------------- bad Unicode


def test_lone_surrogate_in_a_prompt(tmp_path):
    p = _write(tmp_path / "s.jsonl", f'{GOOD}\n{{"prompt": "a\\ud83d", "response": "b"}}\n')
    assert _error("jsonl", p) == r"data.path: s.jsonl line 2: prompt holds a lone surrogate \ud83d"


def test_lone_surrogate_in_a_message_content(tmp_path):
    rows = [json.dumps({"messages": CHAT})] * 6 + [json.dumps({"messages": _chat("x\ud83d")})]
    p = _write(tmp_path / "chat.jsonl", "\n".join(rows) + "\n")
    assert _error("jsonl", p) == r"data.path: chat.jsonl line 7: messages[2].content holds a lone surrogate \ud83d"


def test_lone_surrogate_in_a_key(tmp_path):
    p = _write(tmp_path / "k.jsonl", f'{GOOD}\n{{"prompt": "a", "response": "b", "\\udc00x": 1}}\n')
    assert _error("jsonl", p) == r"data.path: k.jsonl line 2: the key '\udc00x' holds a lone surrogate \udc00"
    nested = {"messages": [*CHAT[:1], {"role": "assistant", "content": "a", "\ud800": 1}]}
    p = _write(tmp_path / "n.json", json.dumps([{"messages": CHAT}, nested]))
    assert _error("jsonl", p) == (r"data.path: n.json item 2: the key '\ud800' in messages[1] holds a lone "
                                  r"surrogate \ud800")


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz", "bad.jsonl.bz2"])
def test_invalid_utf8_in_jsonl(tmp_path, name):
    p = _write(tmp_path / name, GOOD.encode() + b'\n{"prompt": "caf\xe9", "response": "b"}\n')
    assert _error("jsonl", p) == f"data.path: {name} line 2: prompt holds invalid UTF-8 (byte 0xe9)"


def test_invalid_utf8_outside_a_string_names_the_column(tmp_path):
    p = _write(tmp_path / "o.jsonl", GOOD.encode() + b'\n{"prompt": "a",\xff "response": "b"}\n')
    assert _error("jsonl", p) == "data.path: o.jsonl line 2: invalid UTF-8 (byte 0xff) at column 16"


def test_invalid_utf8_in_csv(tmp_path):
    p = _write(tmp_path / "bad.csv", b"prompt,response\nword,W O R D\nw\xc3(rd,W\n")
    assert _error("csv", p) == "data.path: bad.csv row 2: prompt holds invalid UTF-8 (byte 0xc3)"
    p = _write(tmp_path / "head.csv", b"prompt,resp\xffonse\nword,W\n")
    assert _error("csv", p) == (r"data.path: head.csv header: the column name 'resp\udcffonse' holds "
                                "invalid UTF-8 (byte 0xff)")


def test_invalid_json_is_still_invalid_json(tmp_path):
    p = _write(tmp_path / "j.jsonl", f'{GOOD}\n{{"prompt": "a" "response": "b"}}\n')
    assert _error("jsonl", p) == "data.path: j.jsonl line 2: invalid JSON (Expecting ',' delimiter)"


# --------------------------------------------------------------------------- control characters


@pytest.mark.parametrize(("line", "field", "code"), [
    ('{"prompt": "a\\u0000b", "response": "b"}', "prompt", "U+0000"),
    ('{"prompt": "a", "response": "b\\u001b[31m"}', "response", "U+001B"),
    ('{"prompt": "a\x01b", "response": "b"}', "prompt", "U+0001"),  # raw: strict JSON refuses it
    ('{"prompt": "a", "response": "b", "meta": {"tags": ["x", "\\u000b"]}}', "meta.tags[1]", "U+000B"),
])
def test_control_characters_in_jsonl(tmp_path, line, field, code):
    p = _write(tmp_path / "c.jsonl", f"{GOOD}\n{line}\n")
    assert _error("jsonl", p) == f"data.path: c.jsonl line 2: {field} holds a control character {code}"


def test_control_character_in_a_message_content(tmp_path):
    rows = [json.dumps({"messages": CHAT})] * 6 + [json.dumps({"messages": _chat("a\x00b")})]
    p = _write(tmp_path / "chat.jsonl", "\n".join(rows) + "\n")
    assert _error("jsonl", p) == "data.path: chat.jsonl line 7: messages[2].content holds a control character U+0000"


def test_control_characters_in_csv(tmp_path):
    p = _write(tmp_path / "c.csv", "prompt,response\nword,W\nw\x1bord,W\n")
    assert _error("csv", p) == "data.path: c.csv row 2: prompt holds a control character U+001B"
    # A message list as JSON text in a cell: the escape is named once parsed.
    p = tmp_path / "m.csv"
    pd.DataFrame({"messages": [json.dumps(CHAT), json.dumps(_chat("\x07"))]}).to_csv(p, index=False)
    assert _error("csv", p) == "data.path: m.csv row 2: messages[2].content holds a control character U+0007"


def test_control_characters_in_parquet(tmp_path):
    p = tmp_path / "c.parquet"
    pd.DataFrame([PAIR, {"prompt": "word", "response": "W\x00"}]).to_parquet(p)
    assert _error("parquet", p) == "data.path: c.parquet row 2: response holds a control character U+0000"
    p = tmp_path / "m.parquet"
    pd.DataFrame({"messages": [CHAT, _chat("\x1b")]}).to_parquet(p)
    assert _error("parquet", p) == "data.path: m.parquet row 2: messages[2].content holds a control character U+001B"


def test_control_characters_in_a_hub_folder(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"messages": CHAT}, {"messages": _chat("x\x01")}]).save_to_disk(str(folder))
    assert _error("hub", folder) == "data.path: saved row 2: messages[2].content holds a control character U+0001"
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([PAIR] * 4),
                          "test": datasets.Dataset.from_list([PAIR, {"prompt": "\x02", "response": "x"}])}
                         ).save_to_disk(str(splits))
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(source="hub", path=str(splits), eval_split="test"))
    assert str(err.value) == "data.eval_split: splits row 2: prompt holds a control character U+0002"


def test_the_eval_file_is_checked_too(tmp_path):
    train = _write(tmp_path / "train.jsonl", "\n".join([GOOD] * 4) + "\n")
    ev = _write(tmp_path / "eval.jsonl", '{"prompt": "a\\u0000", "response": "b"}\n')
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(source="jsonl", path=str(train), eval_path=str(ev)))
    assert str(err.value) == "data.eval_path: eval.jsonl line 1: prompt holds a control character U+0000"


def test_a_tool_calls_json_arguments_are_checked(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": '{"q": "\\ud83d"}'}}
    messages = [CHAT[0], {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "content": "1"},
                {"role": "assistant", "content": "done"}]
    p = _write(tmp_path / "t.jsonl", json.dumps({"messages": messages}) + "\n")
    assert _error("jsonl", p) == (r"data.path: t.jsonl line 1: messages[1].tool_calls[0].function.arguments.q "
                                  r"holds a lone surrogate \ud83d")


def test_tab_newline_cr_and_form_feed_are_text(tmp_path):
    text = "a\tb\nc\r\nd\x0ce"
    want = [{"prompt": "word", "response": "W O R D"}, {"prompt": text, "response": "x"}]
    p = _write(tmp_path / "ok.jsonl", f"{GOOD}\n{json.dumps({'prompt': text, 'response': 'x'})}\n")
    assert load_examples(DataConfig(source="jsonl", path=str(p))) == want
    pd.DataFrame(want).to_csv(tmp_path / "ok.csv", index=False)
    assert load_examples(DataConfig(source="csv", path=str(tmp_path / "ok.csv"))) == want
    pd.DataFrame(want).to_parquet(tmp_path / "ok.parquet")
    assert load_examples(DataConfig(source="parquet", path=str(tmp_path / "ok.parquet"))) == want
    chat = [{"messages": CHAT}, {"messages": _chat(text)}]
    _write(tmp_path / "chat.json", json.dumps(chat, indent=1))
    got = load_examples(DataConfig(source="jsonl", path=str(tmp_path / "chat.json")))
    assert got[1]["messages"][2]["content"] == text


# --------------------------------------------------------------------------- a line too long to be a row


def test_a_line_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(load_module, "MAX_LINE_BYTES", 1024)
    at_limit = json.dumps({"prompt": "p" * (1024 - 30), "response": "r"})
    at_limit = at_limit.replace('"r"', '"' + "r" * (1024 - len(at_limit) + 1) + '"')
    assert len(at_limit) == 1024
    ok = _write(tmp_path / "ok.jsonl", f"{GOOD}\n{at_limit}\n")
    assert len(load_examples(DataConfig(source="jsonl", path=str(ok)))) == 2
    long = json.dumps({"prompt": "p" * 3000, "response": "r"})
    p = _write(tmp_path / "long.jsonl", f"{GOOD}\n{long}\n{GOOD}\n")
    assert _error("jsonl", p) == ("data.path: long.jsonl line 2 is 3.0 KiB long, over the 1.0 KiB a row may be "
                                  "(is the file JSON lines, one row a line?)")
    p = _write(tmp_path / "long.jsonl.gz", f"{GOOD}\n{long}")  # the last line, no newline, compressed
    assert re.fullmatch(r"data.path: long.jsonl.gz line 2 is 3.0 KiB long, over the 1.0 KiB .*", _error("jsonl", p))


def test_the_line_limit_is_16_mib():
    assert load_module.MAX_LINE_BYTES == 16 * 2**20


# --------------------------------------------------------------------------- good data unchanged


def test_good_data_loads_as_before(tmp_path):
    rows = [{"prompt": f"wörd {i} é\u4e2d😀", "response": f"R {i}\tx"} for i in range(10)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"  # ensure_ascii: \u escapes, surrogate pairs
    want = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    for name, data in (("a.jsonl", text), ("b.jsonl", "\ufeff" + text.replace("\n", "\r\n")),
                       ("c.jsonl.gz", "\n\n" + text), ("d.json", json.dumps(rows, ensure_ascii=False))):
        assert load_examples(DataConfig(source="jsonl", path=str(_write(tmp_path / name, data)))) == want, name
    pd.DataFrame(rows).to_csv(tmp_path / "e.csv", index=False, encoding="utf-8-sig")
    assert load_examples(DataConfig(source="csv", path=str(tmp_path / "e.csv"))) == want
    chats = [{"messages": _chat(f"{i} 😀\x0c")} for i in range(5)]
    p = _write(tmp_path / "chat.jsonl", "\n".join(json.dumps(c) for c in chats) + "\n")
    got = load_examples(DataConfig(source="jsonl", path=str(p)))
    assert [g["messages"] for g in got] == [c["messages"] for c in chats]


# --------------------------------------------------------------------------- the real command


def test_the_command_exits_2_with_one_line(tmp_path):
    from helpers.run import one_line_error

    data = _write(tmp_path / "bad.jsonl", "\n".join([GOOD] * 30 + ['{"prompt": "\\ud83d", "response": "x"}']) + "\n")
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    proc = ranksweep(tmp_path, "model=tiny_llama", "trainer=tiny", "logger=none", "data=jsonl", f"data.path={data}")
    line = one_line_error(proc, 2)
    assert line == r"ranksweep: error: data.path: bad.jsonl line 31: prompt holds a lone surrogate \ud83d"
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
