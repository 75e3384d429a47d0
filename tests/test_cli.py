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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import CONF, subprocess_env, write_toy_jsonl
from helpers.run import BIN as RANKSWEEP

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
        "r_text": (("lora.r=abc",), ("lora.r: 'abc' is not an integer",)),
        "r_float": (("lora.r=2.5",), ("lora.r: '2.5' is not an integer",)),
        "unknown_lora_key": (("lora.rank=8",), ("lora.rank: unknown config key",)),
        "added_lora_key": (("+lora.foo=1",), ("unknown config key(s): lora.foo",)),
        "alpha_negative": (("lora.alpha=-1", "lora.alpha_rule=fixed"), ("lora.alpha", "-1")),
        "unknown_family": (("model.family=gpt5",), ("model.family", "gpt5")),
        "unknown_role": (("lora.targets=atention",), ("lora.targets", "atention")),
        "missing_module": (("lora.targets=q_proj+c_attn",), ("lora.targets", "c_attn")),
        "bits_3": (("quant.bits=3",), ("quant.bits must be 4, 8 or 16, got 3",)),
        "missing_file": (jsonl("missing.jsonl"), ("data.path", "missing.jsonl")),
        "empty_file": (jsonl("empty.jsonl"), ("data.path", "empty.jsonl")),
        "malformed_jsonl": (jsonl("bad.jsonl"), ("data.path", "bad.jsonl", "line 3")),
        "missing_column": (jsonl("nocol.jsonl"), ("data.response_column", "nocol.jsonl", "'response'")),
        "max_seq_len_0": (("trainer.max_seq_len=0",), ("trainer.max_seq_len",)),
        "unknown_option": (("model=nope",), ("model/nope",)),
        "unknown_key": (("+lr=1",), ("unknown config key(s): lr",)),
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


def test_estimate_bad_override_is_one_line(tmp_path):
    """`ranksweep estimate` composes through ranksweep.compose: the same one-line errors as a run."""
    for args, line in [(("lora.r=abc",), "lora.r: 'abc' is not an integer"),
                       (("lora.r=-4",), "lora.r must be a positive integer, got -4"),
                       (("model=nope",), "Could not find 'model/nope'")]:
        proc = ranksweep(tmp_path, "estimate", "model=tiny_llama", *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and line in proc.stderr, proc.stderr
        assert not any(tmp_path.iterdir()), "estimate wrote files"


def test_user_config_group(tmp_path):
    """A user's model/my_tiny.yaml, found through --config-dir or hydra.searchpath, reaches the job config."""
    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    text = (CONF / "model" / "tiny_llama.yaml").read_text().replace("name: tiny_llama", "name: my_tiny")
    (conf / "my_tiny.yaml").write_text(text.replace("params_b: 0.0004", "params_b: 0.5"))
    (conf / "broken.yaml").write_text("name: broken\nname: twice\n")
    for where in (("--config-dir", "my_conf"), (f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",)):
        proc = ranksweep(tmp_path, *where, *BASE, "model=my_tiny", "lora.r=4", "--cfg", "job")
        assert proc.returncode == 0, proc.stderr
        cfg = yaml.safe_load(proc.stdout)
        want = {"name": "my_tiny", "id": "tiny:llama", "family": "llama", "variant": "instruct", "dtype": "auto",
                "revision": None, "trust_remote_code": False, "params_b": 0.5}
        assert {k: cfg["model"].get(k) for k in want} == want, cfg["model"]
        assert cfg["lora"]["r"] == 4 and cfg["trainer"]["max_steps"] == 20  # trainer=tiny, packaged
    proc = ranksweep(tmp_path, "--config-dir", "my_conf", "model=my_tyni", "--cfg", "job")
    assert proc.returncode == 2 and "my_tiny" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    # A YAML mistake in the user's file: one line that names the file, no traceback.
    proc = ranksweep(tmp_path, "--config-dir", "my_conf", "model=broken", "--cfg", "job")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "broken.yaml" in proc.stderr and "duplicate key name" in proc.stderr, proc.stderr


def test_cli_and_commands_share_compose_not_each_other():
    """No import cycle: commands never imports cli (cli dispatches to commands), both use ranksweep.compose,
    and none of the three imports another module's private names."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "ranksweep"
    forbidden = {"cli": set(), "commands": {"cli"}, "compose": {"cli", "commands"}}
    for name, others in forbidden.items():
        tree = ast.parse((src / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ranksweep"):
                names = [a.name for a in node.names]
                imported |= {node.module.removeprefix("ranksweep.")} | set(names)
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{name}.py imports private names {private} from {node.module}"
            elif isinstance(node, ast.Import):
                imported |= {a.name.removeprefix("ranksweep.") for a in node.names}
        assert not imported & others, f"{name}.py imports {imported & others}"
        if name != "compose":
            assert "compose" in imported, f"{name}.py does not use ranksweep.compose"


def test_model_name_follows_an_overridden_model_id(tmp_path):
    """model.id=X alone: the run is labelled X's last part, not the model group's name (log, config.yaml)."""
    run = ranksweep(tmp_path, *BASE, "model.id=tiny:qwen2", "trainer.max_steps=1", "hydra.run.dir=run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["name"] == "qwen2"
    named = ranksweep(tmp_path, *BASE, "model.id=tiny:qwen2", "model.name=mine", "trainer.max_steps=1",
                      "hydra.run.dir=named")
    assert named.returncode == 0, named.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "named" / "config.yaml").read_text())["model"]["name"] == "mine"
    est = ranksweep(tmp_path, "estimate", "model=llama3_1_8b", "model.id=meta-llama/Llama-3.2-1B")
    assert est.returncode == 0 and est.stdout.startswith("model Llama-3.2-1B (meta-llama/Llama-3.2-1B)")


def test_ctrl_c_is_one_line_and_keeps_the_log(tmp_path):
    """SIGINT mid-training (Ctrl-C): one line on stderr, exit 130, no traceback; the run's log is kept."""
    import signal
    import time

    # As from a terminal: SIGINT at its default (a test run in the background inherits it ignored).
    proc = subprocess.Popen([RANKSWEEP, *BASE, "trainer.max_steps=400", "trainer.log_every=1", "hydra.run.dir=run"],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    seen = False
    for line in proc.stdout:  # the console log: wait for training to be under way
        seen = "step 2/400" in line
        if seen or time.time() > deadline:
            break
    assert seen, "training never logged step 2"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [x for x in err.strip().splitlines() if x.startswith("ranksweep: ")]
    assert lines == ["ranksweep: error: interrupted; what was already written is kept"], err[-2000:]
    assert "Traceback" not in err
    assert "step 1/400" in (tmp_path / "run" / "cli.log").read_text()  # (step 2 may race the signal)
