"""The ``ranksweep`` command beyond bad input (the catalogue of bad input is ``test_bad_input.py``): a user's
config group, the run's name, no import cycle between the entry points, and Ctrl-C (exit 130, a real
process). The runs go through the command's own entry point in this process
(:func:`helpers.run.run_inprocess`) where they need no process of their own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from helpers import CONF, SHRUNK, subprocess_env
from helpers.run import BIN as RANKSWEEP
from helpers.run import run_inprocess

BASE = (*SHRUNK, "trainer=tiny")  # 20 steps, as trainer=tiny packs them


def test_user_config_group(tmp_path):
    """A user's model/my_tiny.yaml, found through --config-dir or hydra.searchpath, reaches the job config."""
    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    text = (CONF / "model" / "tiny_llama.yaml").read_text().replace("name: tiny_llama", "name: my_tiny")
    (conf / "my_tiny.yaml").write_text(text.replace("params_b: 0.0004", "params_b: 0.5"))
    (conf / "broken.yaml").write_text("name: broken\nname: twice\n")
    for where in (("--config-dir", "my_conf"), (f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",)):
        proc = run_inprocess(tmp_path, *where, *BASE, "model=my_tiny", "lora.r=4", "--cfg", "job")
        assert proc.returncode == 0, proc.stderr
        cfg = yaml.safe_load(proc.stdout)
        want = {"name": "my_tiny", "id": "tiny:llama", "family": "llama", "variant": "instruct", "dtype": "auto",
                "revision": None, "trust_remote_code": False, "params_b": 0.5}
        assert {k: cfg["model"].get(k) for k in want} == want, cfg["model"]
        assert cfg["lora"]["r"] == 4 and cfg["trainer"]["max_steps"] == 20  # trainer=tiny, packaged
    proc = run_inprocess(tmp_path, "--config-dir", "my_conf", "model=my_tyni", "--cfg", "job")
    assert proc.returncode == 2 and "my_tiny" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    # A YAML mistake in the user's file: one line that names the file, no traceback.
    proc = run_inprocess(tmp_path, "--config-dir", "my_conf", "model=broken", "--cfg", "job")
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
    run = run_inprocess(tmp_path, *BASE, "model.id=tiny:qwen2", "trainer.max_steps=1", "hydra.run.dir=run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["name"] == "qwen2"
    named = run_inprocess(tmp_path, *BASE, "model.id=tiny:qwen2", "model.name=mine", "trainer.max_steps=1",
                          "hydra.run.dir=named")
    assert named.returncode == 0, named.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "named" / "config.yaml").read_text())["model"]["name"] == "mine"
    est = run_inprocess(tmp_path, "estimate", "model=llama3_1_8b", "model.id=meta-llama/Llama-3.2-1B")
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
