"""Running the ``ranksweep`` command: the real one in a subprocess (:func:`ranksweep`, :func:`start`), or its
entry point in this process (:func:`run_inprocess`, for the many bad inputs that need no process of their own).
The tiny overrides (:data:`TINY_RUN`, :data:`TINY_SWEEP`, ...) live in :mod:`helpers`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from helpers import PYTHON, SHRUNK, SHRUNK_RUN, SHRUNK_SWEEP, TINY_RUN, TINY_SWEEP, subprocess_env  # noqa: F401

BIN = str(Path(PYTHON).parent / "ranksweep")


def env(cache: Optional[Path] = None, **extra: str) -> dict[str, str]:
    """:func:`helpers.subprocess_env` with offline W&B and, when given, the model cache."""
    e = subprocess_env(WANDB_MODE="offline")
    if cache is not None:
        e["RANKSWEEP_CACHE"] = str(cache)
    e.update(extra)
    return e


def ranksweep(cwd: Path, *args: str, cache: Optional[Path] = None, timeout: int = 600,
              **extra: str) -> subprocess.CompletedProcess:
    """``ranksweep ARGS`` in ``cwd``; output captured as text."""
    return subprocess.run([BIN, *args], cwd=cwd, env=env(cache, **extra), capture_output=True, text=True,
                          timeout=timeout)


def sweep(cwd: Path, cache: Path, *args: str, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    """A tiny ``ranksweep -m`` sweep (:data:`TINY_SWEEP` plus ``args``)."""
    return ranksweep(cwd, "-m", *TINY_SWEEP, *args, cache=cache, timeout=timeout, **extra)


def start(cwd: Path, cache: Path, *args: str) -> subprocess.Popen:
    """A ``ranksweep`` process in its own session (so a test can kill it and its children)."""
    return subprocess.Popen([BIN, *args], cwd=cwd, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(procs: Sequence[subprocess.Popen], timeout: int = 900) -> list[tuple[int, str, str]]:
    """Each process's (return code, stdout, stderr). One still running after ``timeout`` s fails the test
    with its output, and every process here is killed (with its children), so no hung sweep outlives it."""
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
            raise AssertionError(f"still running after {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
        out.append((p.returncode, stdout, stderr))
    return out


# ----------------------------------------------------------------------------- in this process


@dataclass
class Result:
    """What :func:`run_inprocess` gives back: the exit code and the captured output (``returncode`` too, the
    name :class:`subprocess.CompletedProcess` uses, so that one assertion takes either)."""

    code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:
        return self.code


def run_inprocess(cwd: Path, *args: str, **env: Optional[str]) -> Result:
    """``ranksweep ARGS`` run in ``cwd`` by this process, through the command's own entry points:
    :func:`ranksweep.commands.main` for a subcommand, :func:`ranksweep.cli.main` for a run or a sweep.

    What a child process would start afresh is set up, and put back afterwards: fds 1 and 2 (and
    ``sys.stdout`` / ``sys.stderr``) go to temp files, as to a child's pipes (not a terminal); ``sys.argv``;
    the working folder (Hydra's ``outputs/runs/<time>`` is relative to it); the environment (``env`` on
    top; a value ``None`` unsets the variable), where ``cli.main`` sets ``HYDRA_FULL_ERROR``; Hydra's
    global state (``GlobalHydra``, ``HydraConfig``); the logging handlers and levels Hydra installs
    (its log file would otherwise be written again by later records); ``cli``'s per-run lists; the
    masked-URL vault. A warning shown during the run is printed on its stderr, as a process prints it (pytest
    would record it instead), and a logging handler made earlier on this session's stdout / stderr writes to
    the run's. As :func:`helpers.subprocess_env` does for a child, this session's switches are not lent:
    ``HYDRA_FULL_ERROR`` is unset and ``_TRACEBACKS`` (read once, at import) is off.

    What needs a process of its own stays in one (:func:`ranksweep`): the installed script, a crash or
    a kill, Ctrl-C, and whatever is read at import time (``HYDRA_FULL_ERROR=1``, the Hub's offline switch,
    library warnings on import). Not thread-safe: run one at a time (subprocesses may run beside it).
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ranksweep import cli, commands, urls

    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_vault = dict(urls._VAULT)
    saved_tracebacks = cli._TRACEBACKS, commands._TRACEBACKS
    logs = _LoggingState()
    for key in ("HYDRA_FULL_ERROR", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.pop(key, None)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(value)
    cli._TRACEBACKS = commands._TRACEBACKS = False
    GlobalHydra.instance().clear()
    sys.argv = [BIN, *args]
    try:
        os.chdir(cwd)
        with warnings.catch_warnings():
            # A warning shown goes to stderr, as in a process (pytest would record it instead); the filters
            # stay this session's (pyproject.toml's).
            warnings.showwarning = _show_warning
            try:
                with _captured() as out:
                    code = _call(cli, commands, list(args))
            finally:
                logs.restore()  # (logging.captureWarnings undone before the warnings module is put back)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update({k: v for k, v in saved_env.items() if os.environ.get(k) != v})
        cli._TRACEBACKS, commands._TRACEBACKS = saved_tracebacks
        cli._RUN_ERRORS.clear()
        cli._STARTED.clear()
        urls._VAULT.clear()
        urls._VAULT.update(saved_vault)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return Result(code, out["stdout"], out["stderr"])


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """What Python prints for a warning nobody catches: on stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def inprocess(cwd: Path, *args: str, cache: Optional[Path] = None, **extra: Optional[str]) -> Result:
    """:func:`ranksweep` run by this process (:func:`run_inprocess`), with what :func:`env` gives a child:
    offline W&B and, when given, the model cache."""
    mine = {"WANDB_MODE": "offline", **({"RANKSWEEP_CACHE": str(cache)} if cache is not None else {})}
    return run_inprocess(cwd, *args, **{**mine, **extra})


def sweep_inprocess(cwd: Path, cache: Path, *args: str, **extra: Optional[str]) -> Result:
    """:func:`sweep` run by this process: a tiny ``ranksweep -m`` (:data:`TINY_SWEEP` plus ``args``)."""
    return inprocess(cwd, "-m", *TINY_SWEEP, *args, cache=cache, **extra)


def _call(cli, commands, args: list[str]) -> int:
    """The exit code the console script (``cli.run``) would exit with; what the interpreter would print
    for an exception that escapes it (its traceback) goes to stderr."""
    try:
        if args and args[0] in cli.SUBCOMMANDS:
            return commands.main(args[0], args[1:])
        return cli.main(args)
    except SystemExit as exc:  # Hydra's --help, ...: sys.exit as the interpreter reads it
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - uncaught in a process: a traceback on stderr, exit code 1
        traceback.print_exc()
        return 1


@contextmanager
def _captured() -> Iterator[dict[str, str]]:
    """fds 1 and 2 into temp files, with ``sys.stdout`` / ``sys.stderr`` writing to them (not a terminal);
    the dict it yields holds ``stdout`` and ``stderr`` once the block ends. Works inside pytest's own capture
    (which is put back after), so a module-scoped fixture can use it, where ``capfd`` cannot be."""
    files = {"stdout": tempfile.TemporaryFile(), "stderr": tempfile.TemporaryFile()}
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    texts: dict[str, str] = {}
    streams: list = []
    moved: list = []
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(files[name].fileno(), fd)
            streams.append(open(fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False))
        sys.stdout, sys.stderr = streams
        # A library's handler made before (on this session's stdout / stderr) writes where a child's would.
        moved = _retarget(dict(zip(map(id, saved_streams), streams)))
        yield texts
    finally:
        for stream in streams:
            stream.flush()
        _retarget({id(new): old for new, old in zip(streams, saved_streams)}, moved)
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        for name, f in files.items():
            f.seek(0)
            texts[name] = f.read().decode("utf-8", "replace")
            f.close()


def _retarget(where: dict[int, object], handlers: Optional[list] = None) -> list:
    """Point every logging.StreamHandler whose stream is a key of ``where`` (by id) at its value; returns them."""
    if handlers is None:
        handlers = [h for lg in _LoggingState._loggers().values() for h in lg.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    moved = []
    for h in handlers:
        if id(h.stream) in where:
            h.setStream(where[id(h.stream)])
            moved.append(h)
    return moved


class _LoggingState:
    """What a run changes in logging that a process would drop at its end: the root logger's level and handlers
    (Hydra's console handler and its job's log file, which later records would write to again), log files
    opened on any logger, warnings sent to logging. :meth:`restore` puts them back and closes what was added.
    Other loggers stay as the run left them, as in a process: a level a module sets when it is imported (once
    per session) must hold for the next run too, and a library's handler made during the run writes to fd 2,
    which is the next run's stderr."""

    def __init__(self) -> None:
        root = logging.getLogger()
        self.root = (root.level, root.disabled, list(root.handlers))
        self.handlers = {id(h) for lg in self._loggers().values() for h in lg.handlers}
        self.capture_warnings = logging._warnings_showwarning is not None  # type: ignore[attr-defined]

    @staticmethod
    def _loggers() -> dict[str, logging.Logger]:
        found = {name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        return {"": logging.getLogger(), **found}

    def restore(self) -> None:
        for name, lg in self._loggers().items():
            added = [h for h in lg.handlers if id(h) not in self.handlers]
            for h in added:
                if not name or isinstance(h, logging.FileHandler):
                    h.close()
                    lg.removeHandler(h)
        root = logging.getLogger()
        level, root.disabled, root.handlers[:] = self.root
        root.setLevel(level)
        if not self.capture_warnings:
            logging.captureWarnings(False)


def one_line_error(proc: subprocess.CompletedProcess | Result, code: int = 2) -> str:
    """The single ``ranksweep: error: ...`` line a bad input must end with (asserted); returns it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def summary(cwd: Path, study: str) -> dict:
    return json.loads((cwd / "outputs" / "sweeps" / study / "sweep_summary.json").read_text())


def curve(doc: dict) -> list:
    """What must agree between two runs of the same sweep: ranks, values, decisions."""
    return [(lad["key"], lad["base"], [(r["rank"], r["values"], r["state"]) for r in lad["rungs"]],
             lad["stop_reason"], (lad["recommendation"] or {}).get("rank")) for lad in doc["ladders"]]


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
