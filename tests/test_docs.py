"""The documentation's links work: every relative link names a file in the repository and every
#anchor a heading of that file."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_readme_first_screen_gives_the_two_commands_then_the_product_then_machines():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = text[:1500]
    assert "make demo" in first and "make test" in first
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## What it does", "## Running across machines"]
    for doc in DOCS:
        assert "SPEC" not in doc.read_text(encoding="utf-8"), f"{doc.name} cites a spec the repository does not hold"


def test_security_counts_the_sweepable_keys_the_code_has():
    """Issue 39: SECURITY.md said 9 sweepable keys while the code accepted more."""
    from producer.planning.sweep import SWEEP_KEYS

    said = re.search(r"\| sweep \| (\d+) sweepable keys", (ROOT / "docs" / "SECURITY.md").read_text())
    assert said and int(said.group(1)) == len(SWEEP_KEYS), (said and said.group(0), SWEEP_KEYS)
