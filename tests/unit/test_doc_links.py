"""Every relative link in README.md and docs/*.md points at a file that exists, and every
`#anchor` at a heading of its target, by GitHub's rules (lowercase; punctuation other than `-`
and `_` dropped; spaces to `-`; a repeated heading gets `-1`, `-2`, ...)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings in code are not links)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path.read_text()):
        match = _HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(path.read_text()):
        # inline code cannot hold a link, but a link's text may hold inline code
        targets += _LINK.findall(_INLINE_CODE.sub("code", line))
    return [t for t in targets if not _EXTERNAL.match(t)]


def problems(path: Path) -> list[str]:
    found = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            shown = resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else resolved
            found.append(f"{target}: no file {shown}")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            found.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return found


def test_the_anchor_rules_match_githubs() -> None:
    assert (
        github_anchor("The private API's callers (`api.saga_auth=iam`)")
        == "the-private-apis-callers-apisaga_authiam"
    )
    assert (
        github_anchor("Sizing: everything else (`make capacity`)") == "sizing-everything-else-make-capacity"
    )
    assert (
        github_anchor("Throughput at Stripe's latency (issue 13)") == "throughput-at-stripes-latency-issue-13"
    )


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n## Two words\n\n[ok](#two-words) [bad](#three) [gone](b.md)\n")
    assert problems(tmp_path / "a.md") == [
        "#three: no heading with anchor #three in a.md",
        f"b.md: no file {tmp_path / 'b.md'}",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.relative_to(REPO_ROOT).as_posix() for d in DOCUMENTS])
def test_relative_links_resolve(document: Path) -> None:
    assert problems(document) == []
