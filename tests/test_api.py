"""The small public API: every name resolves, and `import ranksweep` stays light."""

from __future__ import annotations

import subprocess
import sys

import ranksweep


def test_every_exported_name_resolves():
    for name in ranksweep.__all__:
        assert getattr(ranksweep, name) is not None, name


def test_import_does_not_pull_in_torch():
    code = "import sys, ranksweep; ranksweep.MarginRule; ranksweep.read_study; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sweeper_and_report_do_not_import_torch():
    """The sweeper process plans and records; only jobs train. Errors it catches live in ranksweep.errors."""
    code = ("import sys, ranksweep.sweep.sweeper, ranksweep.sweep.summary, ranksweep.plot, "
            "hydra_plugins.ranksweep_sweeper.ranksweep_sweeper; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
