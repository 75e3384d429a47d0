"""Recording a finished job in the study: COMPLETE with its objective, PRUNED, or FAIL with a reason."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from ranksweep.errors import RanksweepError, SweepAborted, TrialPruned
from ranksweep.sweep import keys
from ranksweep.sweep.results import Trial

log = logging.getLogger("ranksweep.sweep")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def record(study: optuna.Study, trial: optuna.trial.Trial, ret: Any) -> None:
    """Tell ``study`` how the job of ``trial`` ended. ``ret`` is Hydra's JobReturn or the exception the
    launcher raised. A user error (bad input fails every trial alike) is re-raised after recording."""
    from hydra.core.utils import JobStatus

    try:
        # JobReturn.return_value re-raises a job's exception after printing its overrides;
        # read the status and the stored value instead.
        if isinstance(ret, BaseException):
            raise ret
        if ret.status != JobStatus.COMPLETED:
            raise ret._return_value
        value = float(ret._return_value)
        if not math.isfinite(value):
            raise ValueError(f"the job returned a non-finite objective {value}")
        study.tell(trial, value)
    except TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, exc)
    except Exception as exc:  # the job failed, the launcher lost it, or it returned garbage
        kind = getattr(exc, "kind", None) or ("user" if isinstance(exc, RanksweepError) else "error")
        reason = _one_line(exc)
        from ranksweep.launchers import describe_job_failure

        known = describe_job_failure(exc)
        if known is not None:
            kind, reason = known[0], known[1]
        trial.set_user_attr(keys.FAILURE_KIND, kind)
        trial.set_user_attr(keys.FAIL_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed (%s): %s", trial.number, kind, reason)
        if isinstance(exc, RanksweepError):
            raise


def check_failures(trials: Sequence[Trial], max_failure_rate: float) -> None:
    """Abort the sweep past ``max_failure_rate`` failed trials (at least two; infeasible ranks don't count)."""
    from ranksweep.launchers import RETRY_KINDS

    # Ranks that do not fit and jobs the scheduler took away (run again) are not the trials' failures.
    failed = [t for t in trials
              if t.state == TrialState.FAIL and t.failure_kind not in (None, "infeasible", *RETRY_KINDS)]
    finished = [t for t in trials if t.finished] + failed
    if len(failed) >= 2 and len(failed) / max(len(finished), 1) > max_failure_rate:
        last = failed[-1].fail_reason or "?"
        raise SweepAborted(f"aborting sweep: {len(failed)} of {len(finished)} trials failed "
                           f"(hydra.sweeper.max_failure_rate={max_failure_rate}); last: {last}")
