"""The documentation: the MkDocs site builds strictly, and the README stays a front page."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def test_the_site_builds_strictly(tmp_path):
    """`make docs`'s build: a broken link or anchor, a missing page or a page left out of the
    nav is an error."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (requirements-dev.txt pins "
                        "it): the documentation build is not checked")
    pytest.importorskip("material", reason="mkdocs-material is not installed "
                        "(requirements-dev.txt pins it): the documentation build is not checked")
    finished = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's end-of-life notice
    )
    assert finished.returncode == 0, finished.stderr + finished.stdout
    assert (tmp_path / "site" / "index.html").is_file()


def _heading_anchors(markdown: str) -> set[str]:
    """The anchors MkDocs' toc extension gives a page's headings (its default slugify)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\s-]", "", heading).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", slug))
    return anchors


def test_the_readme_is_a_front_page_whose_links_into_the_docs_exist():
    """The README is not part of the site, so the strict build does not check its links."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(((?:docs|configs|benchmarks)/[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert links, "the README links into docs/"
    missing = [target for target, _ in links if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
    broken = [f"{target}#{anchor}" for target, anchor in links if anchor
              and anchor not in _heading_anchors((ROOT / target).read_text(encoding="utf-8"))]
    assert not broken, f"README links to missing headings: {broken}"
