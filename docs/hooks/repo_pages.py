"""mkdocs hook: the site reads the repository as GitHub does.

Pages link with paths relative to their own file, so every link works on GitHub. Two files outside
docs/ become pages of the site, read in place: README.md is the home page and bench/RESULTS.md the
measured results. A link on any page to a file outside docs/ is checked here (a missing file fails a
strict build, as a broken link inside docs/ does in mkdocs itself) and rewritten: to the page when the
file is one of those two, else to the file on ``repo_url`` when mkdocs.yml sets one, else to its text.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
# Site page -> the repository file it shows.
PAGES = {"index.md": "README.md", "bench/RESULTS.md": "bench/RESULTS.md"}
LINK = re.compile(r"(!?)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?((?:\s+\"[^\"]*\")?)\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
log = logging.getLogger("mkdocs.hooks.repo_pages")


def on_files(files: Any, config: Any) -> Any:
    for uri, source in PAGES.items():
        if files.get_file_from_path(uri) is not None:
            log.warning(f"docs/{uri} exists, and the site shows {source} there: remove one")
            continue
        files.append(File.generated(config, uri, abs_src_path=str(REPO / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    uri = page.file.src_uri
    real = REPO / PAGES[uri] if uri in PAGES else docs / uri
    shown = {(REPO / source).resolve(): target for target, source in PAGES.items()}
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            fenced = not fenced
        if not fenced:
            line = LINK.sub(lambda m: _rewrite(m, uri, real, docs, shown, config), line)
        out.append(line)
    return "".join(out)


def _rewrite(m: re.Match, uri: str, real: Path, docs: Path, shown: dict, config: Any) -> str:
    bang, text, target, title = m.groups()
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
        return m.group(0)  # a URL, an anchor on the page, or an absolute path (mkdocs judges those)
    path, _, anchor = target.partition("#")
    resolved = (real.parent / path).resolve()
    inside_docs = resolved == docs or docs in resolved.parents
    if inside_docs and uri not in PAGES:
        return m.group(0)  # docs/ to docs/: mkdocs checks it
    if inside_docs:
        if not resolved.exists():
            log.warning(f"{_name(uri)} links to '{target}', which does not exist")
        site = resolved.relative_to(docs).as_posix()
    elif resolved in shown:
        site = shown[resolved]
    else:
        if REPO not in resolved.parents or not resolved.exists():
            log.warning(f"{_name(uri)} links to '{target}', which is not a file of the repository")
            return m.group(0)
        rel = resolved.relative_to(REPO).as_posix()
        if config.get("repo_url"):
            kind = "tree" if resolved.is_dir() else "blob"
            url = f"{config['repo_url'].rstrip('/')}/{kind}/HEAD/{rel}" + (f"#{anchor}" if anchor else "")
            return f"{bang}[{text}]({url}{title})"
        return text if not bang else f"`{rel}`"
    link = posixpath.relpath(site, posixpath.dirname(uri) or ".") + (f"#{anchor}" if anchor else "")
    return f"{bang}[{text}]({link}{title})"


def _name(uri: str) -> str:
    return PAGES.get(uri) or os.path.join("docs", uri)
