"""The documents measured: RuREBus training documents (never copied anywhere; only figures leave), and
longer ones made by concatenating them, in pages of about 1,800 characters."""

from __future__ import annotations

from pathlib import Path

from app.text.brat import Document, read_document

PAGE = 1800  # characters in a typical page of these reports
DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "rurebus"


def corpus_texts(corpus: Path) -> list[Document]:
    paths = sorted(Path(corpus).glob("train_part_*/*.txt"))
    if not paths:
        raise SystemExit(f"no RuREBus documents under {corpus} (train_part_*/*.txt); pass --corpus")
    return [read_document(p) for p in paths]


def words(text: str) -> int:
    """Words as a reader counts them (whitespace-separated), the unit of every words/s figure."""
    return len(text.split())


def typical(docs: list[Document], count: int) -> list[Document]:
    """`count` documents from the middle of the length distribution (not the shortest, which flatter
    per-call overheads, nor the longest, which take minutes on a small CPU)."""
    ordered = sorted(docs, key=lambda d: (len(d.text), d.name))
    start = max(0, len(ordered) // 2 - count // 2)
    return ordered[start : start + count]


def pages(docs: list[Document], count: int) -> str:
    """About `count` pages of text: whole documents joined by a blank line, cut at a line break (or a space)
    near `count` pages."""
    target = count * PAGE
    parts, size = [], 0
    for d in sorted(docs, key=lambda d: d.name):
        parts.append(d.text.strip())
        size += len(parts[-1]) + 2
        if size >= target:
            break
    text = "\n\n".join(parts)[:target]
    cut = max(text.rfind("\n"), text.rfind(" "))
    return text[:cut] if cut > target * 0.9 else text
