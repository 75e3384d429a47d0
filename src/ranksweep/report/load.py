"""What the report reads: a study opened with one-line errors, its trials and its ladders.

The ladders come from :func:`ranksweep.sweep.reader.read_study`, the reader the sweeper plans
with, so a report of a running or interrupted sweep is current. Stop-rule settings come from the
study (the sweeper stores them), else from the sweep's ``sweep_summary.json``, else the defaults.
Each ladder is then annotated with its adapters' own evidence (:func:`ranksweep.sweep.conclude.annotate`
with :func:`ranksweep.evidence.compare`: subspace similarity and extra energy against the previous
rank), read from the adapters on disk where they still are.

On top of :class:`~ranksweep.sweep.results.Trial`, the report reads what only it shows: each
trial's ``metrics.json``, its adapter's size on disk, its output dir and offline W&B run resolved
against the working directory or the storage's root.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ranksweep.errors import RanksweepError
from ranksweep.sweep import conclude, keys
from ranksweep.sweep.reader import Spec, read_study, spec_of_study
from ranksweep.sweep.results import Ladder, Trial
from ranksweep.sweep.settings import DEFAULT_STORAGE_URL
from ranksweep.sweep.summary import SUMMARY_FILENAME
from ranksweep.urls import journal_path, mask_secrets, sqlite_path, storage_root

__all__ = ["ADAPTER_FILE", "StudyData", "TrialRow", "check_storage", "evidence_reader", "load_existing_study",
           "load_study_data", "open_existing_storage", "sweep_dirs", "trial_steps", "wandb_run_dirs"]

ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"
KEY = "--storage"


@dataclass(frozen=True)
class TrialRow:
    """One trial as the report shows it: the sweep's :class:`Trial` and what was found on disk."""

    trial: Trial
    output_dir: Optional[Path] = None  # resolved; may not exist any more
    wandb_dir: Optional[Path] = None  # the offline W&B run dir, when on disk
    wandb_run: Optional[str] = None  # as recorded (a dir, or an online run path)
    adapter_mb: Optional[float] = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the trial's metrics.json

    number = property(lambda self: self.trial.number)
    ladder = property(lambda self: self.trial.ladder)
    rank = property(lambda self: self.trial.rank)
    seed = property(lambda self: self.trial.seed)
    role = property(lambda self: self.trial.role)
    state = property(lambda self: self.trial.state)
    attrs = property(lambda self: self.trial.attrs)
    intermediate = property(lambda self: self.trial.intermediate)

    @property
    def last_value(self) -> Optional[float]:
        """The objective, or a pruned trial's last eval (shown and plotted, never decided on): the trial's
        :attr:`~ranksweep.sweep.results.Trial.last_value`."""
        return self.trial.last_value

    def number_attr(self, key: str) -> Optional[float]:
        """A finite number from the trial's user attributes, else from its metrics.json."""
        got = self.trial.number_attr(key)
        if got is not None:
            return got
        try:
            f = float(self.metrics.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None

    def cost(self, key: str) -> Optional[float]:
        """A cost of the trial: ``adapter_mb`` or a numeric attribute (duration_s, peak_mem_gb, ...)."""
        return self.adapter_mb if key == "adapter_mb" else self.number_attr(key)


@dataclass
class StudyData:
    """What the report needs from one study."""

    name: str
    storage: str  # the URL, secrets masked
    direction: str
    objective: str
    space: dict[str, Any]
    trials: list[TrialRow]
    ladders: list[Ladder]
    summary_path: Optional[Path]
    summary_note: str
    sweep_dirs: list[Path]
    summary_runs: list[Path]
    spec: Optional[Spec] = None  # how the ladders were read: the stop rule, its margin, the search budget

    def ladder_rows(self, key: str) -> list[TrialRow]:
        return [r for r in self.trials if r.ladder == key]

    def rank_rows(self, key: str, rank: int) -> list[TrialRow]:
        """Every trial that trained ``rank`` on ladder ``key`` (search slots, further seeds, retries); not the
        nested prescreen, which trained every rank up to its top one in one adapter (its own table shows it)."""
        return [r for r in self.trials if r.ladder == key and r.rank == rank and r.role not in ("base", "prescreen")
                and not r.trial.claim_lost]


# ----------------------------------------------------------------------------- the storage


def check_storage(url: str) -> None:
    """Refuse, with one line, a storage that cannot be read as it is: a missing SQLite or journal
    file (reading must not create one), an empty file, an SQLite file that is not Optuna's."""
    from ranksweep.storage import check_optuna_sqlite

    url = str(url)
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        raise RanksweepError(f"{KEY}: no such database: {db} (run a sweep first, or pass --storage URL)")
    journal = journal_path(url)
    if journal is not None and not journal.is_file():
        raise RanksweepError(f"{KEY}: no such journal file: {journal}")
    if db is not None:
        if db.stat().st_size == 0:
            raise RanksweepError(f"{KEY}: {db} is empty, not an Optuna database")
        check_optuna_sqlite(db, KEY)


def open_existing_storage(url: str) -> Any:
    """The Optuna storage at ``url`` after :func:`check_storage` (``ranksweep dashboard`` serves it)."""
    from ranksweep.storage import open_storage

    check_storage(url)
    return open_storage(str(url), key=KEY)


def load_existing_study(study_name: str, storage_url: str = DEFAULT_STORAGE_URL) -> Any:
    """Load an existing study; a missing storage file, a corrupt one or an unknown study is one line."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = str(storage_url)
    storage = open_existing_storage(url)
    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:  # a file with the SQLite header that is not an Optuna database
        raise RanksweepError(f"{KEY}: cannot read studies from {mask_secrets(url)}: "
                             f"{' '.join(str(exc).split())[:200]}") from exc
    names = sorted(s.study_name for s in summaries)
    if study_name not in names:
        there = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        raise RanksweepError(f"study {study_name!r} not found in {mask_secrets(url)} (studies there: {there})")
    return optuna.load_study(study_name=study_name, storage=storage)


# ----------------------------------------------------------------------------- files on disk


def _roots(storage_url: str) -> list[Path]:
    """Where relative paths of a study are looked up: the working directory, then the storage's root."""
    roots = [Path.cwd()]
    root = storage_root(str(storage_url))
    if root is not None and root not in roots:
        roots.append(root)
    return roots


def _resolve(path: Optional[str], roots: Sequence[Path]) -> Optional[Path]:
    """An absolute path for ``path``: as is when absolute, else the first root where it exists."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    for root in roots:
        if (root / p).exists():
            return (root / p).resolve()
    return (roots[0] / p).resolve() if roots else p.resolve()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _offline_runs(folder: Path) -> list[Path]:
    wandb = folder / "wandb"
    return sorted(p for p in wandb.glob("offline-run-*") if p.is_dir()) if wandb.is_dir() else []


def trial_row(t: Trial, roots: Sequence[Path]) -> TrialRow:
    """``t`` with its metrics.json, adapter size and W&B run dir read from disk."""
    out = _resolve(t.output_dir, roots)
    metrics = _read_json(out / "metrics.json") if out is not None else {}
    adapter = out / ADAPTER_FILE if out is not None else None
    adapter_mb = adapter.stat().st_size / 1e6 if adapter is not None and adapter.is_file() else None
    wb = t.wandb_run or metrics.get("wandb_run")
    wb_dir = _resolve(wb, roots) if wb else None
    if wb_dir is not None and not wb_dir.is_dir():
        wb_dir = None  # an online run path (entity/project/id) or a deleted dir
    if not wb and out is not None:
        found = _offline_runs(out)  # pruned and failed trials do not record `wandb_run`, but their run is on disk
        wb_dir = found[-1] if found else None
    return TrialRow(trial=t, output_dir=out, wandb_dir=wb_dir, wandb_run=str(wb) if wb else None,
                    adapter_mb=adapter_mb, metrics=metrics)


def trial_steps(r: TrialRow) -> Optional[int]:
    """The optimizer steps a trial ran: its recorded ``steps``, else its last eval step (a pruned trial)."""
    got = r.number_attr(keys.STEPS)
    if got is not None:
        return int(got)
    return max(r.intermediate) if r.intermediate else None


def evidence_reader(roots: Sequence[Path]) -> Callable[[str, str], Optional[tuple[float, float]]]:
    """:func:`ranksweep.evidence.compare` on two trials' output dirs, resolved like every path of the study."""
    from ranksweep import evidence

    def compare(small: str, large: str) -> Optional[tuple[float, float]]:
        a, b = _resolve(small, roots), _resolve(large, roots)
        if a is None or b is None or not a.is_dir() or not b.is_dir():
            return None
        return evidence.compare(a, b)

    return compare


def sweep_dirs(study_name: str, storage_url: str, trials: Sequence[Trial]) -> list[Path]:
    """Candidate sweep dirs of a study: parents of its trials' output dirs, then outputs/sweeps/<study>."""
    roots = _roots(storage_url)
    found: list[Path] = []
    for t in trials:
        out = _resolve(t.output_dir, roots)
        if out is not None and out.parent not in found:
            found.append(out.parent)
    for r in roots:
        p = (r / "outputs" / "sweeps" / study_name).resolve()
        if p not in found:
            found.append(p)
    return found


def _find_summary(study_name: str, dirs: Sequence[Path]) -> tuple[Optional[Path], dict[str, Any]]:
    """The study's ``sweep_summary.json`` in one of ``dirs`` (the first one naming this study)."""
    for d in dirs:
        cand = d / SUMMARY_FILENAME
        if cand.is_file():
            doc = _read_json(cand)
            if (doc.get("sweep") or {}).get("study_name", study_name) == study_name and doc.get("ladders"):
                return cand, doc
    return None, {}


def _note(study: Any, summary_path: Optional[Path]) -> str:
    if study.user_attrs.get(keys.STUDY_SETTINGS):
        return "built from the study, with the stop-rule settings its sweeper stored there"
    if summary_path is not None:
        return f"built from the study, with the stop-rule settings of {summary_path}"
    return (f"built from the study; no {SUMMARY_FILENAME} found (sweep interrupted or still running), "
            "so the default stop-rule settings are assumed")


# ----------------------------------------------------------------------------- the study


def load_study_data(study_name: str, storage_url: str = DEFAULT_STORAGE_URL, adapters: bool = True) -> StudyData:
    """Everything the report shows for one study; a missing or empty study is a one-line error. With
    ``adapters``, each rung's adapter is compared with the previous rank's (read from disk)."""
    study = load_existing_study(study_name, storage_url)
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    if not frozen:
        raise RanksweepError(f"study {study_name!r} in {mask_secrets(str(storage_url))} has no trials")
    trials = [Trial.from_frozen(t) for t in frozen]
    roots = _roots(storage_url)
    dirs = sweep_dirs(study_name, storage_url, trials)
    summary_path, doc = _find_summary(study_name, dirs)
    order = [str(lad.get("key")) for lad in doc.get("ladders", []) if isinstance(lad, dict) and lad.get("key")]
    meta = dict(doc.get("sweep") or {})
    ladders = read_study(study, meta, order)
    for lad in ladders if adapters else ():
        conclude.annotate(lad, evidence_reader(roots))
    space = dict(study.user_attrs.get(keys.STUDY_SPACE) or {})
    objective = str(space.get("objective") or (ladders[0].objective if ladders else "objective"))
    runs: list[Path] = []
    for d in dirs:
        runs += [p for p in _offline_runs(d) if p not in runs]
    return StudyData(name=study_name, storage=str(mask_secrets(str(storage_url))),
                     direction=study.direction.name.lower(), objective=objective, space=space,
                     trials=[trial_row(t, roots) for t in trials], ladders=ladders, summary_path=summary_path,
                     summary_note=_note(study, summary_path), sweep_dirs=[d for d in dirs if d.is_dir()],
                     summary_runs=runs, spec=spec_of_study(study, meta, order))


def wandb_run_dirs(study_name: str, storage_url: str = DEFAULT_STORAGE_URL) -> list[Path]:
    """The offline W&B run dirs of a study: one per trial (``wandb_run``), then the sweep's summary run(s)."""
    data = load_study_data(study_name, storage_url, adapters=False)
    out: list[Path] = []
    for r in data.trials:
        if r.wandb_dir is not None and r.wandb_dir not in out:
            out.append(r.wandb_dir)
    return out + [p for p in data.summary_runs if p not in out]
