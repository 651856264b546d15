"""The documentation: every relative link in the README and docs/ resolves, and the API reference builds from
the docstrings with warnings as errors (as .ci/run builds it)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # fenced blocks and inline code: not links
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = _CODE.sub("", page.read_text(encoding="utf-8"))
    dead = [t for t in _LINK.findall(text)
            if "://" not in t and not t.startswith("mailto:") and not (page.parent / t).exists()]
    assert not dead, f"{page.relative_to(ROOT)} links to missing files: {dead}"


def test_the_api_reference_builds_without_a_warning(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "SabrSettings" in api
    sabr_page = (tmp_path / "site" / "regularizer" / "index.html").read_text(encoding="utf-8")
    assert "penalty" in sabr_page and ":meth:" not in sabr_page  # docstrings rendered, Sphinx roles as code
