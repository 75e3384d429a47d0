"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link or anchor, or a page
missing from the nav, fails it), its settings reference lists every setting the code defines, and the
README's links are relative paths that work on GitHub.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install 'ranksweep[docs]'")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install 'ranksweep[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def _codes(page: Path) -> set[str]:
    """The text of every code span on a built page."""
    return {html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<code>(.*?)</code>", page.read_text(), re.S)}


def test_every_page_is_built(site):
    pages = sorted(p.relative_to(REPO / "docs").with_suffix("") for p in (REPO / "docs").glob("*.md"))
    assert pages, "no pages in docs/"
    for page in pages:
        assert (site / page / "index.html").is_file(), page
    home = (site / "index.html").read_text()
    assert "Two commands" in home and 'src="rank_curve.png"' in home  # the README, its image in place
    assert (site / "bench" / "RESULTS" / "index.html").is_file()


def test_settings_reference_lists_every_sweeper_setting(site):
    from ranksweep.sweep.settings import SweepSettings

    codes = _codes(site / "settings" / "index.html")
    missing = [f"hydra.sweeper.{f.name}" for f in dataclasses.fields(SweepSettings)
               if f"hydra.sweeper.{f.name}" not in codes]
    assert not missing, f"not in the settings reference: {missing}"


def test_settings_reference_lists_every_config_key(site):
    from ranksweep.config import RunConfig

    codes = _codes(site / "settings" / "index.html")
    hints = typing.get_type_hints(RunConfig)
    keys = []
    for f in dataclasses.fields(RunConfig):
        group = hints[f.name]
        if dataclasses.is_dataclass(group):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(group)]
        else:
            keys.append(f.name)
    assert len(keys) > 50
    missing = [k for k in keys if k not in codes]
    assert not missing, f"not in the settings reference: {missing}"


def test_readme_links_are_relative_and_resolve():
    """GitHub resolves the README's links against the repository: each must be a file or folder there."""
    text = re.sub(r"```.*?```", "", (REPO / "README.md").read_text(), flags=re.S)
    links = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    local = [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I) and not link.startswith("#")]
    assert any(link.startswith("docs/") for link in local), links
    for link in local:
        assert not link.startswith("/"), f"{link}: not relative"
        path = link.split("#", 1)[0]
        assert (REPO / path).exists(), f"README.md links to {link}, which does not exist"
