"""A study knows what it is: safe names, the trial config it was started with, the folder it owns,
and a base evaluation that follows the memory plan."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from helpers import SHRUNK_SWEEP, compose
from helpers.run import Result, run_inprocess

from ranksweep.config import to_run_config
from ranksweep.errors import ConfigError
from ranksweep.sweep import identity

SWEEP = SHRUNK_SWEEP  # r = 8; the trainer is the test's
MINE = "defaults:\n  - tiny\n  - _self_\n\nmax_steps: 2\neval_every: 2\n"


def ranksweep(cwd: Path, *args: str) -> Result:
    """The command, run in this process through its entry point (the real script's one line and exit codes are
    test_bad_input.py's subprocess cases)."""
    return run_inprocess(cwd, *args)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(proc: Result, code: int = 2) -> str:
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    return line


# ----------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("name", ["rank_doubling", "llama-3.1_8b", "a", "A1.b-c_d"])
def test_safe_names(name):
    assert identity.check_name("hydra.sweeper.study_name", name) == name


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "..", "", "two words", "x" * 129, "a\nb",
                                  "/abs", "c:\\x", "-flag"])
def test_unsafe_names_are_refused_naming_the_key(name):
    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.study_name must be"):
        identity.check_name("hydra.sweeper.study_name", name)


def test_ladder_labels_are_printable():
    assert identity.check_label("ladder", "data.path=/a/b.jsonl lora.targets=qv")
    with pytest.raises(ConfigError, match="^ladder: "):
        identity.check_label("ladder", "lora.targets=a\x1b[2Jb")


def test_trial_identity_leaves_out_what_varies_per_job():
    run = to_run_config(compose("model=tiny_llama", "lora.r=64", "trainer.seed=3", "trial.trial_number=7"))
    flat = identity.trial_identity(run, searched=["trainer.lr"])
    assert "lora.r" not in flat and "trainer.seed" not in flat and "trainer.lr" not in flat
    assert not [k for k in flat if k.startswith("trial.")] and "cache_dir" not in flat
    assert flat["model.id"] == "tiny:llama" and "trainer.max_steps" in flat and "lora.alpha" in flat
    other = identity.trial_identity(to_run_config(compose("model=tiny_llama", "lora.r=8")), searched=["trainer.lr"])
    assert other == flat


class FakeStudy:
    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key, value) -> None:
        self.user_attrs[key] = value


def test_bind_study_stores_then_refuses_a_different_config():
    study = FakeStudy()
    a = identity.trial_identity(to_run_config(compose("model=tiny_llama")))
    identity.bind_study(study, {"default": a}, "s")
    identity.bind_study(study, {"default": a}, "s")  # the same config resumes
    b = identity.trial_identity(to_run_config(compose("model=tiny_llama", "trainer.weight_decay=0.1")))
    with pytest.raises(ConfigError, match=r"study 's' was started with another trial config \(differs in "
                                          r"trainer\.weight_decay \(0\.0 -> 0\.1\)\)"):
        identity.bind_study(study, {"default": b}, "s")


def test_storage_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert identity.storage_identity("sqlite:///outputs/x.db") == f"sqlite:///{tmp_path.resolve()}/outputs/x.db"
    assert identity.storage_identity("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"


def test_folder_of_another_study_is_refused(tmp_path):
    folder = tmp_path / "sweeps" / "s"
    identity.open_folder(folder, "sqlite:///a.db", "s")
    identity.bind_folder(folder, "sqlite:///a.db", "s")
    identity.open_folder(folder, "sqlite:///a.db", "s")  # its own study: fine
    with pytest.raises(ConfigError, match=r"^hydra\.sweep\.dir: .* holds the trials of study 's' in sqlite:///a\.db"):
        identity.open_folder(folder, "sqlite:///b.db", "s")
    with pytest.raises(ConfigError, match=r"^hydra\.sweep\.dir: cannot create"):
        (tmp_path / "file").write_text("x")
        identity.open_folder(tmp_path / "file" / "s", "sqlite:///a.db", "s")


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny sweep started with a user's config file (conf/trainer/mine.yaml): base and r=8."""
    w = tmp_path_factory.mktemp("identity")
    (w / "conf" / "trainer").mkdir(parents=True)
    (w / "conf" / "trainer" / "mine.yaml").write_text(MINE)
    proc = ranksweep(w, "--config-dir", "conf", *SWEEP, "trainer=mine", "hydra.sweeper.study_name=id")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


def _trials(w: Path, study: str = "id") -> int:
    return len(optuna.load_study(study_name=study, storage=f"sqlite:///{w}/outputs/ranksweep.db").trials)


def test_the_same_config_resumes(swept):
    before = _trials(swept)
    proc = ranksweep(swept, "--config-dir", "conf", *SWEEP, "trainer=mine", "hydra.sweeper.study_name=id")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _trials(swept) == before  # nothing trained again
    marker = swept / "outputs" / "sweeps" / "id" / identity.MARKER
    assert '"study_name": "id"' in marker.read_text()


def test_an_edited_config_file_is_refused(swept):
    before = digest(swept / "outputs")
    mine = swept / "conf" / "trainer" / "mine.yaml"
    mine.write_text(MINE.replace("max_steps: 2", "max_steps: 3") + "lr: 0.001\n")
    try:
        proc = ranksweep(swept, "--config-dir", "conf", *SWEEP, "trainer=mine", "hydra.sweeper.study_name=id")
    finally:
        mine.write_text(MINE)
    line = one_line(proc)
    assert "study 'id' was started with another trial config" in line, line
    assert "trainer.lr (0.005 -> 0.001)" in line and "trainer.max_steps (2 -> 3)" in line, line
    assert digest(swept / "outputs") == before


def test_the_same_name_on_a_second_storage_is_refused(swept):
    before = digest(swept / "outputs")
    proc = ranksweep(swept, "--config-dir", "conf", *SWEEP, "trainer=mine", "hydra.sweeper.study_name=id",
                     "hydra.sweeper.storage=sqlite:///outputs/second.db")
    line = one_line(proc)
    assert "hydra.sweep.dir" in line and "holds the trials of study 'id'" in line and "second.db" in line, line
    assert digest(swept / "outputs") == before
    assert not (swept / "outputs" / "second.db").exists()
    # Its own folder is fine.
    proc = ranksweep(swept, "--config-dir", "conf", *SWEEP, "trainer=mine", "hydra.sweeper.study_name=id",
                     "hydra.sweeper.storage=sqlite:///outputs/second.db", "hydra.sweep.dir=outputs/sweeps/id-second")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_path_like_study_name_is_refused(swept):
    before = digest(swept)
    line = one_line(ranksweep(swept, *SWEEP, "trainer=tiny", "hydra.sweeper.study_name=../../escape"))
    assert line.startswith("ranksweep: error: hydra.sweeper.study_name must be") and "'../../escape'" in line
    assert digest(swept) == before and not (swept.parent / "escape").exists()


def test_a_base_that_would_not_fit_is_recorded_infeasible(tmp_path):
    """start_rank far beyond the memory limit: the base evaluation is not run, it is recorded infeasible."""
    proc = ranksweep(tmp_path, *SWEEP, "trainer=tiny", "trainer.memory_limit_gb=0.0001",
                     "hydra.sweeper.study_name=big")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (base,) = optuna.load_study(study_name="big", storage=f"sqlite:///{tmp_path}/outputs/ranksweep.db").trials
    assert base.state.name == "FAIL" and base.user_attrs["failure_kind"] == "infeasible"
    assert "r=8" in base.user_attrs["fail_reason"] and "would not fit" in base.user_attrs["fail_reason"]
    assert "base evaluation failed" in proc.stdout
    assert not (tmp_path / "outputs" / "sweeps" / "big" / "trial-0000-base").exists()
