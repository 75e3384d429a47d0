"""What fine-tuners type without thinking: WANDB_* variables, ``ranksweep --help``, a journal file given as the
plain path ``optuna`` and ``optuna-dashboard`` take, locks that never claim without holding them, and a
missing optional package named by its extra.

The locks run against real servers where they can start here (MariaDB for ``GET_LOCK``, PostgreSQL for the
advisory lock; skipped with the reason otherwise).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import fields
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest
from helpers import CONF, NO_CHECKS, SWEEPS, compose
from helpers.run import BIN, PYTHON, free_port, one_line_error, ranksweep

from ranksweep import extras, tracking
from ranksweep.config import to_run_config
from ranksweep.errors import ConfigError
from ranksweep.locks import LockTimeout, check_get_lock, mysql_lock_name, study_lock
from ranksweep.sweep.settings import SweepSettings
from ranksweep.urls import journal_path

WANDB_VARS = ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_DIR", "WANDB_DISABLED")
TINY = ("model=tiny_llama", "trainer=tiny", "data.max_examples=60", "data.eval_size=8", "data.metric_examples=0")
WANDB = str(Path(sys.executable).parent / "wandb")


def _env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in WANDB_VARS and k != "HYDRA_FULL_ERROR"}
    e.update(OMP_NUM_THREADS="1", WANDB_SILENT="true", NO_COLOR="1", **extra)
    return e


# ----------------------------------------------------------------------------- W&B's variables


@pytest.fixture
def no_wandb_env(monkeypatch):
    for k in WANDB_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _logger(*overrides: str):
    """The logger config as a run starts it (WANDB_* applied); the config itself keeps its nulls."""
    lg = to_run_config(compose(*TINY, *overrides)).logger
    return lg.effective()


def test_ranksweep_defaults_without_the_environment(no_wandb_env):
    lg = _logger()
    assert (lg.project, lg.entity, lg.mode, lg.dir) == ("ranksweep", None, "offline", None)
    raw = to_run_config(compose(*TINY)).logger  # what conf/logger/wandb.yaml says: from the environment
    assert (raw.project, raw.entity, raw.mode, raw.dir) == (None, None, None, None)


def test_wandb_variables_win_over_the_config_defaults(no_wandb_env, tmp_path):
    no_wandb_env.setenv("WANDB_PROJECT", "env-proj")
    no_wandb_env.setenv("WANDB_ENTITY", "env-team")
    no_wandb_env.setenv("WANDB_MODE", "online")
    no_wandb_env.setenv("WANDB_DIR", str(tmp_path))
    lg = _logger()
    assert (lg.project, lg.entity, lg.mode, lg.dir) == ("env-proj", "env-team", "online", str(tmp_path))
    assert tracking.init_args(lg, "/job")["dir"] == str(tmp_path)


def test_an_explicit_override_wins_over_the_environment(no_wandb_env):
    for k, v in (("WANDB_PROJECT", "env-proj"), ("WANDB_ENTITY", "env-team"), ("WANDB_MODE", "online"),
                 ("WANDB_DIR", "/env/dir")):
        no_wandb_env.setenv(k, v)
    lg = _logger("logger.project=cli-proj", "logger.entity=cli-team", "logger.mode=offline", "logger.dir=/cli")
    assert (lg.project, lg.entity, lg.mode, lg.dir) == ("cli-proj", "cli-team", "offline", "/cli")
    assert _logger("logger=none").mode == "disabled"  # no tracker means none, whatever WANDB_MODE says


@pytest.mark.parametrize("env, mode", [({"WANDB_MODE": "dryrun"}, "offline"), ({"WANDB_MODE": "run"}, "online"),
                                       ({"WANDB_MODE": "disabled"}, "disabled"),
                                       ({"WANDB_DISABLED": "true"}, "disabled")])
def test_wandb_mode_spellings(no_wandb_env, env, mode):
    for k, v in env.items():
        no_wandb_env.setenv(k, v)
    assert _logger().mode == mode


def test_a_bad_wandb_mode_names_the_variable(no_wandb_env):
    no_wandb_env.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE must be one of offline, online, disabled; got 'sometimes'"):
        _logger()
    assert _logger("logger.mode=offline").mode == "offline"  # an explicit mode does not read it


def test_online_without_an_api_key_is_one_line_before_training(tmp_path):
    """W&B online with no key (a new machine, a CI runner): one line that says how to run without it."""
    home = tmp_path / "home"  # no ~/.netrc, no wandb settings
    home.mkdir()
    env = {k: v for k, v in _env(WANDB_MODE="online", HOME=str(home)).items() if k != "WANDB_API_KEY"}
    proc = subprocess.run([BIN, *TINY, "trainer.max_steps=2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    line = one_line_error(proc, 2)
    assert "WANDB_MODE=online: W&B cannot start a run (UsageError: No API key configured" in line, line
    assert "WANDB_MODE=offline" in line and "logger=none" in line
    assert not list(tmp_path.glob("outputs/runs/*/metrics.json")), "it stopped before training"


def test_the_sweep_summary_run_fails_the_same_way(no_wandb_env, tmp_path):
    """The summary run (a resumed sweep whose trials are all done starts no other) gives the same line."""
    no_wandb_env.delenv("WANDB_API_KEY", raising=False)
    no_wandb_env.setenv("HOME", str(tmp_path))  # no ~/.netrc
    raw = {"name": "wandb", "enabled": True, "mode": "online", "tags": []}
    with pytest.raises(ConfigError, match=r"^logger\.mode=online: W&B cannot start a run \(UsageError: No API key"):
        tracking.log_sweep_summary(raw, [], SweepSettings(), tmp_path, tmp_path / "rank_curve.png")


def test_the_sweep_summary_run_resolves_the_same_way(no_wandb_env):
    no_wandb_env.setenv("WANDB_PROJECT", "env-proj")
    raw = {"name": "wandb", "enabled": True, "project": None, "mode": None, "tags": []}  # the sweeper's logger node
    assert tracking.logger_config(raw).project == "env-proj"
    assert tracking.logger_config({**raw, "project": "cli"}).project == "cli"
    assert tracking.init_args(tracking.logger_config(raw), "/sweep")["dir"] == "/sweep"


def _leet_summary(run_dir: Path) -> dict:
    proc = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_a_trial_honours_the_wandb_variables(tmp_path):
    """WANDB_PROJECT and WANDB_DIR place the run; logger.project on the command line wins over WANDB_PROJECT,
    logger.mode=offline over WANDB_MODE=disabled."""
    cache = tmp_path / "cache"
    wb = tmp_path / "wb"
    proc = subprocess.run([BIN, *TINY, "trainer.max_steps=2"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env(RANKSWEEP_CACHE=str(cache), WANDB_PROJECT="env-proj",
                                                WANDB_DIR=str(wb)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (wb / "wandb").glob("offline-run-*")
    assert _leet_summary(run_dir)["project"] == "env-proj"
    assert f"W&B run:  {run_dir}" in proc.stdout
    proc = subprocess.run([BIN, *TINY, "trainer.max_steps=2", "logger.project=cli-proj", "logger.mode=offline"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=_env(RANKSWEEP_CACHE=str(cache), WANDB_PROJECT="env-proj", WANDB_MODE="disabled"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*/wandb/offline-run-*")  # no WANDB_DIR: the job's folder
    assert _leet_summary(run_dir)["project"] == "cli-proj"


# ----------------------------------------------------------------------------- ranksweep --help


def test_help_lists_groups_sweeper_settings_and_subcommands():
    proc = subprocess.run([BIN, "--help", "hydra.sweeper.max_rank=64"], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    folders = {p.name: p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    folders["sweep"] = SWEEPS  # the presets: the group `sweep` (+sweep=NAME), served from sweeps/
    for group, folder in folders.items():
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        assert f"\n{group}: {', '.join(options)}\n" in out, group
    assert "_ranksweep_schema" not in out
    section = out.split("== Sweeper settings")[1].split("== Subcommands")[0]
    for f in fields(SweepSettings):
        assert f"\n  {f.name} " in section, f.name
    assert "  max_rank            the largest rank tried [64]" in section  # values follow the overrides
    assert "[sqlite:///outputs/ranksweep.db]" in section
    subcommands = out.split("== Subcommands")[1].split("== Flags")[0]
    for name in ("report", "export", "sync", "dashboard", "estimate"):
        assert f"\n  {name} " in subcommands, name
    assert "--push-to-hub ORG/NAME" in subcommands
    assert "--multirun,-m" in out and out.startswith("ranksweep: find the LoRA rank worth paying for.")


# ----------------------------------------------------------------------------- a journal file's plain path


def test_journal_paths():
    assert journal_path("outputs/study.log") == Path("outputs/study.log")
    assert journal_path("/shared/x/study.journal") == Path("/shared/x/study.journal")
    assert journal_path("journal:///shared/study.log") == Path("/shared/study.log")  # the alias
    assert journal_path("journal://outputs/s.log") == Path("outputs/s.log")
    for url in ("sqlite:///outputs/ranksweep.db", "outputs/ranksweep.db", "postgresql://u@h/db", "x.log/"):
        assert journal_path(url) is None, url


def test_an_absolute_journal_path_is_a_plain_override():
    cfg = compose("hydra.sweeper.storage=/shared/ranksweep/llama.log", return_hydra_config=True)
    assert journal_path(cfg.hydra.sweeper.storage) == Path("/shared/ranksweep/llama.log")


@pytest.fixture(scope="module")
def journal_sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("journal")
    proc = ranksweep(cwd, "-m", *TINY, "trainer.max_steps=4", "trainer.eval_every=2", "logger=none",
                     "hydra.sweeper.max_rank=16", "hydra.sweeper.storage=outputs/study.log",
                     "hydra.sweeper.study_name=j", *NO_CHECKS, cache=cwd / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cwd / "outputs" / "study.log").is_file() and not (cwd / "outputs" / "ranksweep.db").exists()
    return cwd


@pytest.mark.slow
def test_optuna_cli_and_dashboard_api_read_the_same_path(journal_sweep):
    import optuna
    from optuna_dashboard import wsgi

    from ranksweep.storage import open_storage

    path = "outputs/study.log"
    proc = subprocess.run([str(Path(sys.executable).parent / "optuna"), "trials", "--storage", path,
                           "--study-name", "j", "-f", "json"], cwd=journal_sweep, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = json.loads(proc.stdout)
    alias = optuna.load_study(study_name="j", storage=open_storage(f"journal://{journal_sweep / path}"))
    assert len(trials) == len(alias.trials) >= 3
    assert sorted(t["number"] for t in trials) == [t.number for t in alias.trials]

    app = wsgi(str(journal_sweep / path))  # optuna-dashboard's Python API, on the same string
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = status

    environ = {"PATH_INFO": "/api/studies", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    raw = b"".join(app(environ, start_response))
    assert got["status"].startswith("200"), environ["wsgi.errors"].getvalue()[-2000:]
    body = json.loads(raw)
    assert [s["study_name"] for s in body["study_summaries"]] == ["j"]


@pytest.mark.slow
def test_ranksweep_dashboard_serves_a_journal_path(journal_sweep):
    port = free_port()
    proc = subprocess.Popen([BIN, "dashboard", "--storage", "outputs/study.log", "--port", str(port)],
                            cwd=journal_sweep, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
                    studies = json.loads(resp.read())["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["j"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# ----------------------------------------------------------------------------- locks


def test_file_lock_times_out_with_one_line(tmp_path):
    db = tmp_path / "outputs" / "ranksweep.db"
    url = f"sqlite:///{db}"
    with study_lock(url, "s"):
        assert (tmp_path / "outputs" / "ranksweep.db.ranksweep-lock").exists()
    code = ("import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([PYTHON, "-c", code, f"{db}.ranksweep-lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match="cannot take the study lock .* within 0.5 s") as err:
            with study_lock(url, "s", timeout_s=0.5):
                pytest.fail("claimed without the lock")
        assert time.monotonic() - t0 >= 0.45 and "\n" not in str(err.value) and err.value.exit_code == 1
    finally:
        holder.kill()
        holder.wait()
    with study_lock(url, "s", timeout_s=5):  # free again
        pass


@pytest.mark.parametrize("result", [0, None])
def test_get_lock_result_other_than_1_raises(result):
    with pytest.raises(LockTimeout, match=r"GET_LOCK\('ranksweep:s'\)"):
        check_get_lock(result, mysql_lock_name("s"), 2.0)
    check_get_lock(1, "ranksweep:s", 2.0)


class MariaDB:
    """mariadbd in a temp dir on a free loopback port (as the mysql user; needs root)."""

    def __init__(self) -> None:
        self.bin = shutil.which("mariadbd") or shutil.which("mysqld") or (
            "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)
        self.install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        self.client = shutil.which("mariadb") or shutil.which("mysql")
        self.root = Path(tempfile.mkdtemp(prefix="rs-mariadb-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> MariaDB:
        shutil.chown(self.root, "mysql", "mysql")
        data, sock = self.root / "data", self.root / "mysqld.sock"
        subprocess.run([self.install, "--no-defaults", f"--datadir={data}", "--user=mysql", "--skip-test-db",
                        "--auth-root-authentication-method=normal"], check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen([self.bin, "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                                      f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                                      f"--log-error={self.root / 'err.log'}", "--innodb-buffer-pool-size=16M"],
                                     user="mysql", group="mysql", stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while not sock.exists():
            assert self.proc.poll() is None and time.time() < deadline, (self.root / "err.log").read_text()[-2000:]
            time.sleep(0.2)
        sql = ("CREATE DATABASE rs; CREATE USER 'rs'@'127.0.0.1' IDENTIFIED BY 'pw'; "
               "GRANT ALL ON rs.* TO 'rs'@'127.0.0.1';")
        subprocess.run([self.client, "--no-defaults", "-S", str(sock), "-u", "root", "-e", sql], check=True,
                       capture_output=True, timeout=60)
        return self

    def url(self) -> str:
        return f"mysql+pymysql://rs:pw@127.0.0.1:{self.port}/rs"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def mariadb():
    server = MariaDB()
    if os.geteuid() != 0 or not (server.bin and server.install and server.client):
        pytest.skip("needs root and Debian's mariadb-server (make system-deps)")
    pytest.importorskip("pymysql", reason="needs PyMySQL: pip install 'ranksweep[mysql]'")
    try:
        yield server.start()
    finally:
        server.stop()


def _hold(url: str, sql: str, params: dict, release: threading.Event, held: threading.Event) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text(sql), params).scalar() in (1, None, "")
        held.set()
        release.wait(30)
    engine.dispose()


def _blocked_by(url: str, sql: str, params: dict, study: str) -> LockTimeout:
    release, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(url, sql, params, release, held))
    holder.start()
    try:
        assert held.wait(30)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            with study_lock(url, study, timeout_s=1):
                pytest.fail("claimed without the lock")
        assert time.monotonic() - t0 >= 0.9
        return err.value
    finally:
        release.set()
        holder.join(30)


@pytest.mark.slow
def test_mysql_get_lock_timeout_raises_one_line(mariadb):
    from sqlalchemy import create_engine, text

    url = mariadb.url()
    with study_lock(url, "s"):  # the lock is really held inside the block
        engine = create_engine(url)
        with engine.connect() as other:
            assert other.execute(text("SELECT IS_USED_LOCK('ranksweep:s')")).scalar() is not None
        engine.dispose()
    err = _blocked_by(url, "SELECT GET_LOCK('ranksweep:s', 0)", {}, "s")
    assert "GET_LOCK('ranksweep:s'): another worker held it for 1 s" in str(err) and "\n" not in str(err)
    with study_lock(url, "s", timeout_s=5):  # released by its holder: free again
        pass


@pytest.fixture(scope="module")
def pg():
    from helpers.postgres import PgServer, bin_dir

    if bin_dir() is None:
        pytest.skip("needs Debian's postgresql (make system-deps)")
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_postgres_advisory_lock_timeout_raises_one_line(pg):
    from ranksweep.locks import _key

    url = pg.url()
    with study_lock(url, "s"):
        pass
    err = _blocked_by(url, "SELECT pg_advisory_lock(:k)", {"k": _key("s")}, "s")
    assert "pg_advisory_lock" in str(err) and "within 1 s" in str(err) and "pw" not in str(err)
    with study_lock(url, "s", timeout_s=5):
        pass


# ----------------------------------------------------------------------------- missing extras


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert extras.missing("dashboard") == ("ranksweep dashboard needs the package optuna-dashboard, which is not "
                                           "installed: pip install 'ranksweep[dashboard]'")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.storage: .* pip install 'ranksweep\[postgres\]'$"):
        extras.require_storage_driver("postgresql://u:secret@h/db")
    extras.require_storage_driver("sqlite:///outputs/ranksweep.db")  # no driver needed


def test_dashboard_without_its_extra_is_one_line(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=url)
    code = ("import sys; sys.modules['optuna_dashboard'] = None; from ranksweep.cli import main; "
            f"sys.exit(main(['dashboard', '--storage', {url!r}]))")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert "pip install 'ranksweep[dashboard]'" in one_line_error(proc)
