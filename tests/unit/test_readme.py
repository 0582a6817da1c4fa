"""The README is a landing page: small, exactly two set-up commands, and every link in it and in
docs/ leads somewhere that exists (file and, when given, heading)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SETUP_COMMANDS = ["make deploy TARGET=host MODEL=mobilenet_v3_small", "make test"]
FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.S | re.M)
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")


def _shell_blocks(text: str) -> list[str]:
    """The bodies of fenced blocks whose language is a shell (or none); fences paired in order."""
    blocks = []
    for block in FENCE.findall(text):
        first, _, body = block.partition("\n")
        if first[3:].strip() in SHELL_LANGUAGES:
            blocks.append(body.rsplit("```", 1)[0])
    return blocks
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_landing_page_under_8_kb():
    size = len(README.read_bytes())
    assert size <= 8 * 1024, f"README.md is {size} bytes; move detail into docs/ and link it"


def test_readme_has_exactly_the_two_setup_commands():
    commands = []
    for block in _shell_blocks(README.read_text()):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    assert commands == SETUP_COMMANDS, f"the README's shell blocks hold {commands}; exactly {SETUP_COMMANDS} belong there"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^deploy:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_and_docs_cover_what_a_user_needs():
    text = README.read_text()
    assert "toolkit.shrink(" in text, "the own-model example"
    for page in ("commands", "targets", "own-models-and-data", "tasks", "results", "design",
                 "devices/rpi", "devices/android", "devices/jetson"):
        assert (REPO / "docs" / f"{page}.md").is_file(), page
        assert f"docs/{page}.md" in text, f"the README does not link docs/{page}.md"


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for page in _pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n[ok](#a-title) [bad](missing.md) `[code](not-a-link.md)`\n")
    found = LINK.findall(_prose(page.read_text()))
    assert found == ["#a-title", "missing.md"] and "a-title" in _anchors(page)
