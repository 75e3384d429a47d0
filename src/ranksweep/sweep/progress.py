"""One line per finished trial (a bar on a terminal): done, failed, still to go, last rank, ETA."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from optuna.trial import TrialState

from ranksweep.sweep import keys
from ranksweep.sweep.results import JobStatus, Ladder, Trial

log = logging.getLogger("ranksweep.sweep")


class Progress:
    def __init__(self, study_name: str, seeds: int, n_jobs: int) -> None:
        self.study_name, self.seeds, self.n_jobs = study_name, seeds, n_jobs
        self._bar: Any = None

    def line(self, trials: Sequence[Trial], ladders: Sequence[Ladder], rank: int,
             ladder: str) -> tuple[str, int, int, float]:
        """The progress line after a job of ``ladder`` at ``rank`` ended; also (done+failed, to go, eta s)."""
        done = [t for t in trials if t.finished and keys.LADDER in t.attrs]
        failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.failure_kind)
        # At least: each open ladder's base, or its next rank for every seed.
        ahead = sum(1 if lad.base_status != JobStatus.DONE else self.seeds for lad in ladders if not lad.done)
        secs = [d for d in (t.number_attr(keys.DURATION_S) for t in done) if d is not None]
        eta = (sum(secs) / len(secs)) * ahead / max(self.n_jobs, 1) if secs and ahead else 0.0
        what = "base" if rank == 0 else f"r={rank}"
        text = (f"sweep {self.study_name}: {len(done)} done, {failed} failed, >= {ahead} to go; last {what} "
                f"({ladder}); ladders done {sum(lad.done for lad in ladders)}/{len(ladders)}"
                + (f"; ETA >= {eta / 60:.1f} min" if ahead else ""))
        return text, len(done) + failed, ahead, eta

    def show(self, trials: Sequence[Trial], ladders: Sequence[Ladder], rank: int, ladder: str) -> None:
        text, finished, ahead, eta = self.line(trials, ladders, rank, ladder)
        if not sys.stderr.isatty():
            log.info(text)
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(desc="sweep", unit="trial", dynamic_ncols=True)
        self._bar.total = finished + ahead
        self._bar.n = finished
        self._bar.set_postfix_str(f"{'base' if rank == 0 else f'r={rank}'} ({ladder}), ETA >= {eta / 60:.1f} min")
        self._bar.refresh()
