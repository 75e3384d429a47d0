"""The ``ranksweep`` command: a thin Hydra shell around :func:`ranksweep.trial.run_trial`.

Hydra reads the config tree as an absolute folder, the repo's ``conf/`` or the wheel's
``ranksweep/conf/``, and the presets of ``sweeps/`` as the group ``sweep`` (see
:mod:`ranksweep.compose`). User mistakes (bad overrides, missing files, unknown
modules) end with one line on stderr and exit code 2; every other failure of a run (a NaN
loss, out of memory, a filesystem error) with one line and exit code 1. Set
HYDRA_FULL_ERROR=1 to see tracebacks.

Secrets never reach Hydra: passwords in URLs on the command line are masked before Hydra
parses it (:func:`ranksweep.urls.conceal`), so Hydra's saved files, logs and W&B see the
masked form; a job gets the real values back in memory only (:func:`ranksweep.urls.reveal`).
"""

from __future__ import annotations

import logging
import os
import sys

from ranksweep import compose, quiet
from ranksweep.errors import ConfigError, describe_failure
from ranksweep.hub import offline_if_unreachable
from ranksweep.urls import conceal, mask_secrets, reveal

_TRACEBACKS = "HYDRA_FULL_ERROR" in os.environ


# A failure of a single run's job, re-raised by main() once Hydra returns (raising it through
# Hydra would add Hydra's "Error executing job with overrides: [...]" line to stderr).
_RUN_ERRORS: list[BaseException] = []
# Whether Hydra got as far as calling the job (an OSError before it is about hydra.run.dir).
_STARTED: list[bool] = []


def _job(cfg) -> float | None:
    """Hydra's task function: run one trial in Hydra's job dir, return the objective."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from ranksweep.config import to_run_config

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    _STARTED.append(True)
    try:
        compose.name_follows_id(cfg, hc.overrides.task)
        # Validate (once per job) before the heavy imports (torch, transformers): bad values fail in a second.
        run = reveal(to_run_config(cfg))  # the real storage URL, in memory only
        resolved = mask_secrets(OmegaConf.to_container(cfg, resolve=True))  # what config.yaml and W&B record
        from ranksweep.job import run_job

        # A single run claims its folder; a sweep's trial folders are made in its own sweep folder.
        claim = ("output_dir" if run.output_dir else "hydra.run.dir") if single else None
        return run_job(run, run.output_dir or hc.runtime.output_dir, resolved=resolved, claim=claim)
    except Exception as exc:  # noqa: BLE001 - a single run reports any failure as one line
        if not single or _TRACEBACKS:
            raise
        _RUN_ERRORS.append(exc)
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ranksweep`` console script."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    offline_if_unreachable()  # before transformers / datasets are imported: they read it once
    quiet.install()  # before bitsandbytes is imported: its harmless hub-kernel warning becomes one line of ours
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        # Imported here: `ranksweep report ...` must not pay for Hydra, torch or transformers.
        from ranksweep import commands

        return commands.main(sys.argv[1], sys.argv[2:])
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

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
    # Passwords in URLs never reach Hydra (its saved files, its logs, the jobs' overrides).
    sys.argv[1:] = [conceal(a) for a in compose.sweeper_dict_items(sys.argv[1:])]
    task = hydra.main(version_base=compose.VERSION_BASE, config_path=compose.config_path(),
                      config_name=compose.CONFIG_NAME)(_job)
    _RUN_ERRORS.clear()
    _STARTED.clear()
    try:
        _check_run_dir(sys.argv[1:])
        task()
        if _RUN_ERRORS:
            raise _RUN_ERRORS.pop()
    except (HydraException, OmegaConfBaseException, YAMLError) as exc:  # YAMLError: a broken config file
        if _TRACEBACKS:
            raise
        return _error(compose.describe_error(exc), 2)
    except ValueError as exc:
        # Hydra's own command-line check (`-m --cfg job`) raises a bare ValueError.
        if _TRACEBACKS:
            raise
        if str(exc).startswith("Only one of --run"):
            return _error(compose.describe_error(exc), 2)
        return _error(*describe_failure(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is one line (HYDRA_FULL_ERROR=1: the traceback)
        if _TRACEBACKS:
            raise
        if isinstance(exc, OSError) and exc.strerror and not _STARTED and "-m" not in sys.argv \
                and "--multirun" not in sys.argv:
            # Hydra could not create the run's folder or its log file: the user's hydra.run.dir.
            exc = ConfigError(f"hydra.run.dir: cannot create {exc.filename or ''}: {exc.strerror}")
        return _error(*describe_failure(exc))
    finally:
        logging.shutdown()
    return 0


def _check_run_dir(args: list[str]) -> None:
    """A single run's ``hydra.run.dir`` from the command line, checked before Hydra writes its ``.hydra/``
    and log there (the job checks again, whatever set it: :func:`ranksweep.ownership.claim_run_dir`)."""
    if any(a in ("-m", "--multirun") for a in args):
        return
    from ranksweep.ownership import RUN_MARKER, RUN_WRITES, check_place, is_ours, legacy_run

    for a in args:
        key, _, value = a.partition("=")
        if key.lstrip("+~") == "hydra.run.dir" and value:
            out = check_place(value.strip("'\""), "hydra.run.dir")
            taken = [n for n in (".hydra", "cli.log", *RUN_WRITES) if (out / n).exists()]
            if taken and not is_ours(out, RUN_MARKER, legacy_run):
                raise ConfigError(f"hydra.run.dir: {out} already holds {', '.join(taken)}, which ranksweep did not "
                                  "write; give a new or empty folder (ranksweep overwrites only its own files)")


def _error(line: str, code: int) -> int:
    print(f"ranksweep: error: {mask_secrets(line)}", file=sys.stderr)
    return code


# Subcommands that are not Hydra runs: `ranksweep NAME ...` (ranksweep.commands.COMMANDS).
SUBCOMMANDS = ("report", "export", "sync", "dashboard", "estimate")


def run() -> None:  # pragma: no cover - console script
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C: one line too; exit 130 as a shell reports SIGINT
        if _TRACEBACKS:
            raise
        multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        code = _error("interrupted; what was already written is kept" + (
            " (rerun the same command to resume the sweep: finished trials are not trained again)" if multirun
            else ""), 130)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
