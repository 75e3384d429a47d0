"""User-facing errors.

Every mistake a user can make (a bad override, a missing file, an unknown
module) raises :class:`RanksweepError`. The command line turns it into one
line on stderr and exit code 2; nothing else in ranksweep prints tracebacks
for user input. Other failures (a NaN loss, out of memory, a filesystem error,
a damaged storage) are one line too, exit code 1: :func:`describe_failure`.
"""

from __future__ import annotations

import os


class RanksweepError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(RanksweepError):
    """An invalid config value. The message starts with the override key."""


class DataError(RanksweepError):
    """A missing, empty or malformed dataset."""


class StorageDamaged(RanksweepError):
    """A study storage that cannot be read as it is (never written to): exit code 1."""

    exit_code = 1


class SweepAborted(RanksweepError):
    """Too many trials failed (past ``hydra.sweeper.max_failure_rate``)."""


class TrialFailed(RuntimeError):
    """A trial failed for a reason the sweeper should record (NaN loss, OOM...)."""

    def __init__(self, reason: str, kind: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    def __reduce__(self):  # keep `kind` when a launcher pickles the exception
        return (type(self), (self.reason, self.kind))


class TrialPruned(Exception):
    """Raised inside a trial that its sweeper decided to prune (a decision, not a failure)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"pruned at step {step} (eval {value:.4f})")
        self.step = step
        self.value = value

    def __reduce__(self):  # out-of-process launchers (submitit, joblib) pickle a job's exception
        return (type(self), (self.step, self.value))


# TrialFailed kinds -> what to try next.
_HINTS = {
    "nan": "lower trainer.lr, or check the data",
    "oom": "lower trainer.micro_batch or trainer.max_seq_len, or set trainer.memory_limit_gb",
}


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """One line for any failure, secrets masked, and its exit code: a :class:`RanksweepError`'s own
    (2 for a user error), 1 for the rest (a NaN loss, out of memory, a filesystem error...)."""
    from ranksweep.urls import mask_secrets

    text = " ".join(str(exc).split())
    if isinstance(exc, RanksweepError):
        line, code = text, exc.exit_code
    elif isinstance(exc, TrialFailed):
        hint = _HINTS.get(exc.kind)
        line, code = f"trial failed ({exc.kind}): {text}" + (f"; {hint}" if hint else ""), 1
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        line, code = f"out of memory: {text[:300] or type(exc).__name__}; {_HINTS['oom']}", 1
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {os.fspath(exc.filename)}" if exc.filename is not None else ""
        line, code = f"filesystem error: {exc.strerror}{where}", 1
    else:
        line, code = f"{type(exc).__name__}: {text[:300]} (HYDRA_FULL_ERROR=1 shows the traceback)", 1
    return mask_secrets(line), code
