"""No secret in any file ranksweep or its libraries write.

A tiny sweep on a real PostgreSQL server on loopback, its password on the command line, with
WANDB_API_KEY and HF_TOKEN set and W&B logging (offline): the jobs still reach the study (they get
the real URL in memory), and no file under the working dir (resolved configs, Hydra's ``.hydra/``
files, W&B run files, logs, summaries, reports) holds the password or a token. The same with the
URL in a user's config file (a sweep preset), and for a single run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers import NO_CHECKS, subprocess_env

try:
    from helpers.postgres import PASSWORD, PgServer, bin_dir
except ImportError:  # the helper's older place
    from helpers.postgres import PASSWORD, PgServer, bin_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bin_dir() is None, reason="needs Debian's postgresql (`make system-deps`)")]

RANKSWEEP = str(Path(sys.executable).parent / "ranksweep")
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF_TOKEN = "hf_SecretTokenForTheTests0123456789"
TINY = ("model=tiny_llama", "trainer=tiny", "trainer.max_steps=4", "trainer.eval_every=2", "data.max_examples=60",
        "data.eval_size=10", "data.metric_examples=2", "logger=wandb", *NO_CHECKS)


def ranksweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(WANDB_API_KEY=WANDB_KEY, HF_TOKEN=HF_TOKEN, WANDB_MODE="offline")
    return subprocess.run([RANKSWEEP, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
                          check=False, stdin=subprocess.DEVNULL)


def leaks(root: Path) -> list[str]:
    """Files under ``root`` holding the password or a token (binary files too: W&B's .wandb logs)."""
    secrets = [s.encode() for s in (PASSWORD, WANDB_KEY, HF_TOKEN)]
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*"))
            if p.is_file() and any(s in p.read_bytes() for s in secrets)]


@pytest.fixture(scope="module")
def pg():
    try:
        server = PgServer().start()
    except Exception as exc:  # noqa: BLE001 - no server, no test
        pytest.skip(f"PostgreSQL did not start: {exc}")
    yield server
    server.stop()


def _trained(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    assert trials and all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state) for t in trials]
    return trials


def test_password_on_the_command_line(pg, tmp_path):
    """Two jobs at a time through joblib (child processes): they reach the study with the real password."""
    url = pg.create_db("cmdline")
    proc = ranksweep(tmp_path, "-m", *TINY, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
                     "hydra.sweeper.max_rank=16", "hydra.sweeper.study_name=cmdline", f"hydra.sweeper.storage={url}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trained(url, "cmdline")
    assert any(t.intermediate_values for t in trials), "the jobs never reported to the study"
    assert "postgresql://ranksweep:***@" in proc.stdout
    sweep = tmp_path / "outputs" / "sweeps" / "cmdline"
    assert list(sweep.glob("trial-*/wandb/offline-run-*/run-*.wandb")) and list(sweep.glob("trial-*/.hydra/*.yaml"))
    report = subprocess.run([RANKSWEEP, "report", "cmdline", "--storage", url], cwd=tmp_path, capture_output=True,
                            text=True, env=subprocess_env(), timeout=300, check=False)
    assert report.returncode == 0, report.stderr
    assert not leaks(tmp_path), leaks(tmp_path)
    assert PASSWORD not in proc.stdout + proc.stderr + report.stdout + report.stderr


def test_password_in_a_config_file(pg, tmp_path):
    """A sweep preset of the user's holds the URL: Hydra's saved copies of it are masked."""
    url = pg.create_db("preset")
    conf = tmp_path / "conf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "pg.yaml").write_text(f"# @package _global_\nhydra:\n  sweeper:\n    storage: {url}\n"
                                  "    study_name: preset\n    max_rank: 8\n")
    proc = ranksweep(tmp_path, "--config-dir", str(tmp_path / "conf"), "-m", "+sweep=pg", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _trained(url, "preset")
    hydra_yaml = tmp_path / "outputs" / "sweeps" / "preset" / "trial-0001-r8-s0" / ".hydra" / "hydra.yaml"
    assert "postgresql://ranksweep:***@" in hydra_yaml.read_text()
    outputs = tmp_path / "outputs"
    assert not leaks(outputs), leaks(outputs)


def test_single_run(pg, tmp_path):
    url = pg.url()
    proc = ranksweep(tmp_path, *TINY, "trainer.max_steps=2", f"hydra.sweeper.storage={url}", f"trial.storage={url}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    for name in (".hydra/overrides.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", "config.yaml"):
        assert "postgresql://ranksweep:***@" in (run_dir / name).read_text(), name
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert not leaks(tmp_path), leaks(tmp_path)
