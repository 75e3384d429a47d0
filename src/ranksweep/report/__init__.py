"""A self-contained HTML report of one or more rank sweeps (``ranksweep report STUDY...``).

The report works offline: every figure is drawn with matplotlib and inlined as SVG, the
stylesheet and the few lines of JavaScript (table sorting, an error hook) are inlined from the
package's templates, and nothing is loaded from the network. It shows, per study:

* per ladder, the objective against the rank on a log2 axis with the spread across seeds, the
  base model and the recommended rank (:func:`ranksweep.plot.draw_ladder`);
* cost against quality: wall time, peak memory, trainable parameters and adapter size
  (``adapter/adapter_model.safetensors``) against the objective;
* the eval curves (Optuna's intermediate values);
* why each ladder stopped, and every failed, pruned or unfinished trial with its reason;
* a table of all trials linking their output dirs and offline W&B runs.

With two or more ladders or studies, an overview table and one overlay chart per metric compare
them side by side, followed by one section per study.

Layers: :mod:`.load` (the study, its trials and ladders, read by :mod:`ranksweep.sweep.reader`),
:mod:`.figures` (matplotlib to SVG), :mod:`.html` (the Jinja2 templates in ``templates/``).
"""

from __future__ import annotations

from ranksweep.report.html import default_report_path, render_report, write_report
from ranksweep.report.load import (
    StudyData,
    TrialRow,
    check_storage,
    load_existing_study,
    load_study_data,
    open_existing_storage,
    sweep_dirs,
    wandb_run_dirs,
)

__all__ = [
    "StudyData",
    "TrialRow",
    "check_storage",
    "default_report_path",
    "load_existing_study",
    "load_study_data",
    "open_existing_storage",
    "render_report",
    "sweep_dirs",
    "wandb_run_dirs",
    "write_report",
]
