"""The ``ranksweep`` command: a thin Hydra shell around :func:`ranksweep.trial.run_trial`.

User mistakes (bad overrides, missing files, unknown modules) end with one
line on stderr and exit code 2. Set HYDRA_FULL_ERROR=1 to see tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ranksweep.errors import RanksweepError

CONF_DIR = Path(__file__).resolve().parent / "conf"
_TRACEBACKS = "HYDRA_FULL_ERROR" in os.environ


def conf_dir() -> str:
    """The config tree: $RANKSWEEP_CONF, else the repo's conf/ beside src/."""
    return str(Path(os.environ.get("RANKSWEEP_CONF", CONF_DIR)).resolve())


# A user error raised by a single run's job, re-raised by main() once Hydra returns
# (raising it through Hydra would add Hydra's "Error executing job" line to stderr).
_RUN_ERRORS: list[BaseException] = []


def _job(cfg) -> float | None:
    """Hydra's task function: run one trial in Hydra's job dir, return the objective."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ranksweep.config import to_run_config

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    try:
        # Validate before the heavy imports (torch, transformers): bad values fail in a second.
        to_run_config(cfg)
        from ranksweep.job import run_job

        out = cfg.get("output_dir") or hc.runtime.output_dir
        return run_job(cfg, out)
    except RanksweepError as exc:
        if not single or _TRACEBACKS:
            raise
        _RUN_ERRORS.append(exc)
        return None


def _one_line(exc: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    from ranksweep.config import describe_omegaconf_error

    if isinstance(exc, OmegaConfBaseException):
        return describe_omegaconf_error(exc)
    text = " ".join(str(exc).split())
    # Hydra's composition errors: keep the message and the options it lists, not its search path.
    text = text.split(" Config search path:")[0]
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ranksweep`` console script."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if len(sys.argv) > 1 and sys.argv[1] in _SUBCOMMANDS:
        return _SUBCOMMANDS[sys.argv[1]](sys.argv[2:])
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ranksweep.config import register_configs

    register_configs()
    if not sys.stderr.isatty():
        # Keep stderr for the one-line error: no progress bars (read when the libraries are
        # imported, later), and warnings go to the log (console on stdout, and the job's log file).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        logging.captureWarnings(True)
    # Let exceptions reach us so that we print one line, not Hydra's traceback summary.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    task = hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(_job)
    _RUN_ERRORS.clear()
    try:
        task()
        if _RUN_ERRORS:
            raise _RUN_ERRORS.pop()
    except RanksweepError as exc:
        if _TRACEBACKS:
            raise
        print(f"ranksweep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (HydraException, OmegaConfBaseException) as exc:
        if _TRACEBACKS:
            raise
        print(f"ranksweep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # Hydra's own command-line check (`-m --cfg job`) raises a bare ValueError.
        if _TRACEBACKS or not str(exc).startswith("Only one of --run"):
            raise
        print(f"ranksweep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        logging.shutdown()
    return 0


# Subcommands that are not Hydra runs: `ranksweep NAME ...`.
_SUBCOMMANDS: dict = {
    # Imported lazily: `ranksweep report ...` must not pay for Hydra, torch or transformers.
    name: (lambda argv, _name=name: __import__("ranksweep.commands", fromlist=["main"]).main(_name, argv))
    for name in ("report", "sync", "dashboard", "estimate")
}


def run() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
