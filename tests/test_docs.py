"""The documentation site builds with `mkdocs build --strict`, offline, and every page is reachable."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent


def build(root: Path, site: Path) -> str:
    """Build the site of ``root`` strictly into ``site``; return mkdocs' output (fails on a warning)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(site.parent)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    return output


def test_site_builds_strictly_with_every_page_in_the_nav(tmp_path):
    output = build(ROOT, tmp_path / "site")
    assert "not included in the \"nav\"" not in output.replace("'", '"'), output
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        assert (tmp_path / "site" / page / "index.html").is_file() or page.name == "index", page
    reference = (tmp_path / "site" / "reference" / "generation" / "index.html").read_text()
    assert "SamplingConfig" in reference  # the API reference is read from the sources


def test_pages_added_later_join_the_nav(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "docs", tree / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tree)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("pretrained", "__pycache__"))
    (tree / "docs" / "serve.md").unlink(missing_ok=True)
    build(tree, tmp_path / "before")
    # a page the nav expects (after its anchor page) and one nobody announced (under "More")
    (tree / "docs" / "serve.md").write_text("# The web explorer's manual\n\nA page added after the nav was written.\n")
    (tree / "docs" / "zz-notes.md").write_text("# Notes from another part\n\nText.\n")
    output = build(tree, tmp_path / "after")
    assert "not included in the \"nav\"" not in output.replace("'", '"'), output
    home = (tmp_path / "after" / "index.html").read_text()
    assert "Web explorer manual" in home and "Notes from another part" in home
    assert home.index("Web explorer (serve)") < home.index("Web explorer manual")
