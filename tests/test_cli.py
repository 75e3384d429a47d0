"""The real ``ranksweep`` command on bad input: one line on stderr, exit code 2, no traceback,
and nothing an earlier run wrote is touched.

One good tiny run goes first (in a temp working dir, so Hydra's relative
``outputs/runs/...`` lands there); its files are fingerprinted, every bad
command runs (several at once), then the fingerprints are compared.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import subprocess_env, write_toy_jsonl

RANKSWEEP = str(Path(sys.executable).parent / "ranksweep")
BASE = ("model=tiny_llama", "trainer=tiny", "logger=none", "data.max_examples=60", "data.eval_size=10",
        "data.metric_examples=2")


def ranksweep(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RANKSWEEP, *args], cwd=cwd, check=False, capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of every file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _bad_cases(data: Path, good_dir: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """id -> (overrides, substrings the error line must contain)."""
    def jsonl(name: str) -> tuple[str, str]:
        return ("data=jsonl", f"data.path={data / name}")

    return {
        "r_negative": (("lora.r=-4",), ("lora.r", "-4")),
        "r_text": (("lora.r=abc",), ("lora.r", "abc")),
        "r_float": (("lora.r=2.5",), ("lora.r", "2.5")),
        "alpha_negative": (("lora.alpha=-1", "lora.alpha_rule=fixed"), ("lora.alpha", "-1")),
        "unknown_family": (("model.family=gpt5",), ("model.family", "gpt5")),
        "unknown_role": (("lora.targets=atention",), ("lora.targets", "atention")),
        "missing_module": (("lora.targets=q_proj+c_attn",), ("lora.targets", "c_attn")),
        "bits_3": (("quant.bits=3",), ("quant.bits", "3")),
        "missing_file": (jsonl("missing.jsonl"), ("data.path", "missing.jsonl")),
        "empty_file": (jsonl("empty.jsonl"), ("data.path", "empty.jsonl")),
        "malformed_jsonl": (jsonl("bad.jsonl"), ("data.path", "bad.jsonl", "line 3")),
        "missing_column": (jsonl("nocol.jsonl"), ("data.response_column", "nocol.jsonl", "'response'")),
        "max_seq_len_0": (("trainer.max_seq_len=0",), ("trainer.max_seq_len",)),
        "unknown_option": (("model=nope",), ("model/nope",)),
        "unknown_key": (("+lr=1",), ("lr",)),
        "no_data_path": (("data=jsonl",), ("data.path",)),
        "optim_unknown": (("trainer.optim=lion",), ("trainer.optim", "lion")),
        "memory_limit_negative": (("trainer.memory_limit_gb=-1",), ("trainer.memory_limit_gb", "-1")),
        "ckpt_word": (("trainer.gradient_checkpointing=sometimes",), ("trainer.gradient_checkpointing",)),
        "multirun_and_cfg": (("-m", "--cfg", "job"), ("Only one of --run, --multirun, --cfg",)),
        # Pointed at the good run's folder: the error comes before anything is written there.
        "bad_data_into_old_dir": ((*jsonl("bad.jsonl"), f"output_dir={good_dir}"), ("bad.jsonl", "line 3")),
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    data = work / "data"
    data.mkdir()
    write_toy_jsonl(data / "toy.jsonl", n=60)
    (data / "empty.jsonl").write_text("")
    (data / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n'
                                    '{"prompt": "e", "response": \n{"prompt": "g", "response": "h"}\n')
    (data / "nocol.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')

    good = ranksweep(work, *BASE, "data=jsonl", f"data.path={data / 'toy.jsonl'}", "trainer.max_steps=2")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-3000:]
    runs = sorted((work / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    good_dir = runs[0]
    before = fingerprint(work)

    cases = _bad_cases(data, str(good_dir))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(ranksweep, work, *BASE, *args) for name, (args, _) in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    return {"work": work, "good": good, "good_dir": good_dir, "before": before, "cases": cases,
            "results": results}


def test_good_run(cli):
    good, good_dir = cli["good"], cli["good_dir"]
    assert "Traceback" not in good.stdout + good.stderr
    metrics = json.loads((good_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["trainable_params"] == 38912 and metrics["wandb_run"] is None
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.yaml",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (good_dir / name).is_file(), name
    assert f"adapter:  {good_dir}/adapter" in good.stdout


@pytest.mark.parametrize("case", list(_bad_cases(Path("d"), "g")))
def test_bad_input(cli, case):
    proc = cli["results"][case]
    _, needles = cli["cases"][case]
    err_lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(err_lines) == 1 and err_lines[0].strip(), f"stderr is not one line: {proc.stderr!r}"
    line = err_lines[0]
    assert line.startswith("ranksweep: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)


def test_earlier_output_untouched(cli):
    after = fingerprint(cli["work"])
    before = cli["before"]
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"bad runs changed earlier files: {changed}"
    good_rel = str(cli["good_dir"].relative_to(cli["work"]))
    added = [p for p in after if p not in before and p.startswith(good_rel + "/")]
    assert not added, f"bad runs wrote into the earlier run's folder: {added}"
    # No bad run got as far as writing an adapter or metrics anywhere.
    new_outputs = [p for p in after if p not in before and p.endswith(("metrics.json", "adapter_model.safetensors"))]
    assert not new_outputs, new_outputs
