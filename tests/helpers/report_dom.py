"""The HTML report in headless Chromium, and reading its DOM (tests/test_report.py).

Chromium runs offline (file:// only, nothing resolves); the DOM readers pick a study's section, a
ladder's block and the cells of its evidence table by the classes the templates give them.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def chromium(tmp_path: Path, html_file: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing resolves: offline
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
           html_file.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_screenshot(png: Path) -> None:
    from PIL import Image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.size == (1280, 2000)
        rgb = img.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 200, "the screenshot looks blank"
        background = max(colors)[0] / (1280 * 2000)
        assert background < 0.9, f"{background:.0%} of the screenshot is one colour"


def console_errors(stderr: str) -> list[str]:
    """Console messages Chromium logged (``CONSOLE(...)``) that are errors."""
    lines = stderr.splitlines()
    return [line for line in lines if "CONSOLE" in line and re.search(r"error|uncaught", line, re.I)]


def check_offline(text: str) -> None:
    """No resource is loaded from the network: no http(s) src/href/url()/@import, no external scripts."""
    bad = re.findall(r"""(?:src|href|xlink:href|action)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    bad += re.findall(r"""url\(\s*["']?\s*(?:https?:)?//""", text, re.I)
    bad += re.findall(r"@import", text)
    bad += re.findall(r"<link\b[^>]*\bhref", text, re.I)
    bad += re.findall(r"<script\b[^>]*\bsrc", text, re.I)
    assert not bad, bad


def open_dom(tmp_path: Path, path: Path) -> str:
    """The report's DOM after its scripts ran, checked free of script errors."""
    proc = chromium(tmp_path, path, "--dump-dom")
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    assert re.search(r'<div id="js-errors"[^>]*></div>', proc.stdout), "a script error was caught"
    assert 'id="report-status">ready<' in proc.stdout, "the page's script did not run to the end"
    return proc.stdout


def study_section(dom: str, name: str) -> str:
    found = re.search(rf'<section class="study" id="study-{re.escape(name)}">.*?</section>', dom, re.S)
    assert found, name
    return found.group(0)


def ladder_block(section: str, key: str) -> str:
    """One ladder's part of a study section: its verdict, figures and evidence table."""
    (block,) = [b for b in section.split('<div class="ladder"')[1:] if f'data-ladder="{key}"' in b.split(">", 1)[0]]
    return block.split("<h3>Cost against quality</h3>")[0]


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def evidence_rows(block: str) -> dict[int, str]:
    """The evidence table's rows by rank."""
    return {int(r): row for r, row in re.findall(r'<tr class="rung[^"]*" data-rank="(\d+)">(.*?)</tr>', block, re.S)}


def cell(row: str, cls: str) -> tuple[dict[str, str], str]:
    """``(attributes, text)`` of the row's cell of class ``cls``."""
    found = re.search(rf'<td class="num {cls}\b[^"]*"([^>]*)>(.*?)</td>', row, re.S)
    assert found, (cls, row)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', found.group(1))), text_of(found.group(2))


def check_verdict(block: str, lad: dict) -> None:
    """The recommendation, the budget verdict (a warning box), the eval set and the stop reason, as the
    sweep's summary has them."""
    text = text_of(block)
    assert lad["recommendation"]["why"] in text and lad["stop_reason"] in text
    assert lad["budget"], "a tiny sweep has a budget reading"
    box = re.search(r'<div class="(warning|reading) budget"[^>]*>(.*?)</div>', block, re.S)
    assert box and lad["budget"] in text_of(box.group(2))
    # a warning exactly when the answer is bound by the training budget; a verdict that holds is a reading
    assert (box.group(1) == "warning") == lad["budget_bound"] == ("bound by the training budget" in lad["budget"])
    ev = re.search(r'<span class="eval-set" data-n="(\d+)" data-fingerprint="([^"]*)"', block)
    assert ev and (int(ev[1]), ev[2]) == (lad["eval_set"]["n"], lad["eval_set"]["fingerprint"])
