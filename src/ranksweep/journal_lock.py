"""The lock around each append to a journal file (``journal://...``), freed by the kernel when its holder dies.

What Optuna lacks: its journal locks (``JournalFileSymlinkLock``, ``JournalFileOpenLock``) are files
the holder deletes. A worker killed mid-append (SIGKILL, the OOM killer, ``scancel``) leaves the file
behind: every other worker stalls for the 30 s grace period, then each breaks the lock on its own
clock, so two can append at once. A ``flock`` (:class:`filelock.FileLock`) is released with its holder.

Holding it, an append first drops a torn last line (no newline: a holder died or the disk filled in
the middle of its write, so the record never landed); otherwise the next append would bury it and
Optuna would refuse the whole file from then on. Every writer of a ranksweep journal takes this lock
(:func:`ranksweep.storage.open_storage`); readers need no lock (Optuna skips a torn last line).
"""

from __future__ import annotations

import logging
import os

from filelock import FileLock

log = logging.getLogger("ranksweep.storage")
# How Optuna's JournalFileBackend begins every record (json.dumps of a dict whose first key is op_code).
RECORD_START = b'{"op_code":'
SUFFIX = ".ranksweep-append-lock"  # not Optuna's ``.lock``, nor the claim lock's ``.ranksweep-lock``


class JournalLock:
    """What ``JournalFileBackend(lock_obj=...)`` calls: ``acquire()`` and ``release()`` (its base class,
    ``BaseJournalFileLock``, is not public in Optuna)."""

    def __init__(self, journal: str) -> None:
        self.journal = journal
        # One lock object per storage; JournalStorage's own thread lock keeps its threads in turn.
        self._lock = FileLock(journal + SUFFIX, thread_local=False)

    def acquire(self) -> bool:
        self._lock.acquire()
        try:
            drop_torn_tail(self.journal)
        except BaseException:
            self._lock.release()
            raise
        return True

    def release(self) -> None:
        self._lock.release()


def drop_torn_tail(path: str) -> int:
    """Cut a last line that has no newline (call it holding :class:`JournalLock`); returns the bytes cut."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:  # back to the last complete record's newline
            start = max(0, pos - (1 << 16))
            fh.seek(start)
            i = fh.read(pos - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        if keep == 0:
            fh.seek(0)
            if not fh.read(len(RECORD_START)) == RECORD_START:
                return 0  # not a torn journal record: never cut what Optuna did not write
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("journal %s: dropped an incomplete last record (%d bytes): its writer died or the disk filled "
                "while writing it", path, size - keep)
    return size - keep
