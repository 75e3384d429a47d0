"""User-facing errors.

Every mistake a user can make (a bad override, a missing file, an unknown
module) raises :class:`RanksweepError`. The command line turns it into one
line on stderr and exit code 2; nothing else in ranksweep prints tracebacks
for user input.
"""

from __future__ import annotations


class RanksweepError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(RanksweepError):
    """An invalid config value. The message starts with the override key."""


class DataError(RanksweepError):
    """A missing, empty or malformed dataset."""


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
