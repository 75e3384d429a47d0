"""What a launcher's failure means for a sweep: run the job again, record a timeout, or neither.

hydra-submitit-launcher (``hydra/launcher=slurm_gpu``, ``slurm_cpu``, ``submitit_slurm``) reports a
job that left no result as submitit's ``UncompletedJobError``, with the state SLURM's accounting
(``sacct``) gave it::

    Job 12 (task: 0) with path .../12_0_result.pkl has not produced any output (state: CANCELLED by 0)

A job that gets submitit's time-out signal (``hydra.launcher.signal_delay_s`` before
``timeout_min``) and may not be requeued (``max_num_timeout``, 0 in Hydra's launcher) ends inside
the job with ``UncompletedJobError("Job not requeued because: timed-out too many times.")``.

:func:`describe_job_failure` turns those into ``(kind, reason, retry)``:

- the scheduler took the job away (cancelled, preempted, node failure): retried, the same
  (ladder, rank, seed) runs again, at most :data:`MAX_RETRIES` times;
- the job ran past its time limit: ``timeout``, final (a longer ``timeout_min`` is the fix);
- anything else: ``None``, and the sweeper records the failure as it always does.

The kinds in :data:`RETRY_KINDS` are what the planner (``job_status``) reads back from the study.
"""

from __future__ import annotations

import re
from typing import Optional

RETRY_KINDS = ("cancelled", "preempted", "node_fail")
# A job the scheduler took away this many times more than once is given up (failed, not retried).
MAX_RETRIES = 2

# SLURM job states (sacct) of a job that left no result -> the sweep's failure kind.
_STATE_KINDS = {
    "CANCELLED": "cancelled",
    "PREEMPTED": "preempted",
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
}
_STATE = re.compile(r"\(state: ([A-Z_]+)([^)]*)\)")
_JOB = re.compile(r"^Job (\S+) \(task")
_TIMED_OUT = re.compile(r"Job not requeued because: (timed-out[^.\n]*)")
_TIMEOUT_FIX = "hydra.launcher.timeout_min"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_submitit_uncompleted(exc: BaseException) -> bool:
    """submitit's UncompletedJobError or a subclass (FailedJobError), without importing submitit."""
    return any(c.__name__ == "UncompletedJobError" and c.__module__.startswith("submitit")
               for c in type(exc).__mro__)


def describe_job_failure(exc: BaseException) -> Optional[tuple[str, str, bool]]:
    """``(kind, reason, retry)`` for a failure the scheduler caused, else None (the sweeper's usual handling)."""
    for e in _chain(exc):
        if not _is_submitit_uncompleted(e):
            continue
        text = str(e)
        state = _STATE.search(text)  # the job left no result: SLURM's state says why
        if state is not None and state.group(1) in _STATE_KINDS:
            name, rest = state.group(1), " ".join(state.group(2).split())
            kind = _STATE_KINDS[name]
            job = _JOB.search(text)
            what = f"SLURM job {job.group(1) if job else '?'} {name}{' ' + rest if rest else ''}"
            if kind == "timeout":
                return kind, f"{what}: it ran past its time limit ({_TIMEOUT_FIX})", False
            return kind, f"{what}: the scheduler ended it before it finished (retried, {MAX_RETRIES}x at most)", True
        timed_out = _TIMED_OUT.search(text)  # submitit's time-out signal reached the job
        if timed_out:
            return ("timeout", f"timed out: the job reached its time limit ({_TIMEOUT_FIX}) and submitit "
                               f"did not requeue it ({timed_out.group(1)})", False)
    return None
