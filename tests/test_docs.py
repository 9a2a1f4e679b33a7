"""The README's and docs/'s links: every local file they point at exists, and every
``#anchor`` matches a heading of its file the way GitHub makes anchors from headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# portable: the documents' links (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return _CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (no markup), lower case, every
    character but letters, digits, ``_``, ``-`` and spaces dropped, spaces turned to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives ``path``'s headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(document: Path) -> list[str]:
    """Each local link of ``document`` whose file or anchor does not exist, as text."""
    broken = []
    for target in _LINK.findall(_prose(document.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...: not local
            continue
        name, _, anchor = target.partition("#")
        path = (document.parent / name).resolve() if name else document
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading of {path.name} has the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_and_anchor_resolves(document: Path) -> None:
    assert broken_links(document) == []


def test_the_readme_is_checked_and_links_to_the_performance_notes() -> None:
    assert ROOT / "README.md" in DOCUMENTS and ROOT / "docs" / "performance.md" in DOCUMENTS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/performance.md#" in readme


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text(
        "# Front cost per frame\n\n## The client's offer\n\n"
        "## `fastext warm` (cold)\n\n## Soak\n\n## Soak\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Here\n\n"
        "[ok](other.md) [ok](other.md#front-cost-per-frame) [ok](other.md#the-clients-offer)\n"
        "[ok](other.md#fastext-warm-cold) [ok](other.md#soak-1) [ok](#here) [ok](https://x.invalid/y)\n"
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#front-cost) ![gone](pic.png) [self](#there)\n"
    )
    assert broken_links(doc) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#front-cost: no heading of other.md has the anchor #front-cost",
        f"pic.png: no file {tmp_path / 'pic.png'}",
        "#there: no heading of doc.md has the anchor #there",
    ]
