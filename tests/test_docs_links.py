"""Every relative link in README.md and docs/*.md resolves to a file or folder of the repository.

Markdown links and images `[text](target)` / `![alt](target)` and HTML `<img src="target">`, outside fenced code
blocks and inline code. Links to http(s), mailto and in-page anchors (`#...`) are skipped; `path#anchor` must
resolve its path. A target is relative to the file that holds it (a leading `/` means the repository root)."""
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)
INLINE_CODE = re.compile(r"`+[^`]*`+")
SKIPPED = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.I)  # http:, https:, mailto:, ... and in-page anchors


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str):
    """(line number, target) of every relative link outside code."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = INLINE_CODE.sub("", line)
        for pattern in (MARKDOWN_LINK, IMG_SRC):
            for match in pattern.finditer(line):
                target = match.group(1).strip()
                if target and not SKIPPED.match(target):
                    yield number, target


def broken_links(path: Path) -> list[str]:
    broken = []
    for number, target in relative_links(path.read_text(encoding="utf-8")):
        file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
        base = ROOT if file_part.startswith("/") else path.parent
        resolved = (base / file_part.lstrip("/")).resolve()
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    return broken


def test_doc_files_exist():
    assert (ROOT / "README.md").is_file() and len(doc_files()) > 1


def test_relative_links_resolve():
    broken = [entry for path in doc_files() for entry in broken_links(path)]
    assert not broken, "broken relative links (file:line: target):\n" + "\n".join(broken)


def test_link_finder_sees_links_and_skips_the_rest():
    text = ("[a](docs/x.md) ![b](img.png#frag) <img src=\"c.png\"> [d](https://e.org) [f](#anchor) [g](mailto:h@i)\n"
            "`[not](a-link.md)`\n```\n[also not](code.md)\n```\n[j](k.md#sec)\n")
    assert list(relative_links(text)) == [(1, "docs/x.md"), (1, "img.png#frag"), (1, "c.png"), (6, "k.md#sec")]
