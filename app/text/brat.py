"""brat standoff: read and write `.ann` files next to their `.txt`.

Offsets are half-open Python character offsets into the `.txt` read with `newline=''`, exactly as the
RuREBus organisers and brat count them. The writer emits the shared task's conventions
(`T<n>\\tTYPE start end\\ttext`, `R<n>\\tTYPE Arg1:T<a> Arg2:T<b>`), which the organisers' reader parses.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.errors import BadEncoding, BratFormatError


@dataclass(frozen=True)
class Entity:
    """A text-bound annotation. `fragments` has one (start, end) pair per piece; most have one."""

    id: str
    type: str
    start: int
    end: int
    text: str
    fragments: tuple[tuple[int, int], ...] = ()
    # A model's confidence in [0, 1] (app/text/tags.py: span_score); None where none was computed (gold data).
    score: float | None = field(default=None, compare=False)

    @property
    def discontinuous(self) -> bool:
        return len(self.fragments) > 1

    @property
    def span(self) -> tuple[str, int, int]:
        return (self.type, self.start, self.end)


@dataclass(frozen=True)
class Relation:
    """A directed binary relation: `arg1` and `arg2` are entity ids."""

    id: str
    type: str
    arg1: str
    arg2: str
    # The probability of the model's decision (app/text/tags.py: pair_relations); None for gold data.
    score: float | None = field(default=None, compare=False)


@dataclass
class Document:
    name: str
    text: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    # Lines of kinds we do not model (A, N, E, #, ...) kept verbatim so a rewrite loses nothing.
    other_lines: list[str] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)

    def entity_by_id(self) -> dict[str, Entity]:
        return {e.id: e for e in self.entities}


_FRAGMENTS = re.compile(r"^\d+ \d+(;\d+ \d+)*$")


def read_text(path: Path) -> str:
    """The document text exactly as stored: no newline translation, a BOM kept as a character."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def decode_text(data: bytes, source: str) -> str:
    """`data` as UTF-8, exactly as `read_text` reads a file (no newline translation, a BOM kept).

    Raises BadEncoding naming `source`, the byte and the fix."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEncoding(
            f"{source}: not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "convert it, e.g. `iconv -f cp1251 -t utf-8`"
        ) from None


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _visible(text: str) -> str:
    # A line break inside an entity's text would break the line-based format; the writer turns each into a
    # space, so the reader compares with the same substitution.
    return text.replace("\r", " ").replace("\n", " ")


def parse_ann(ann: str, text: str | None = None, source: str = "<ann>") -> Document:
    """Parse `.ann` content. With `text`, every entity's offsets and text are checked against it.

    Raises BratFormatError naming `source` and the 1-based line for anything malformed.
    """
    doc = Document(name=source, text=text if text is not None else "")
    seen: set[str] = set()
    # Split on "\n" only: str.splitlines() would also break at U+2028, \x0c and others inside entity text.
    for lineno, raw in enumerate(ann.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        kind = line[0]

        def fail(msg: str, lineno: int = lineno) -> BratFormatError:
            return BratFormatError(f"{source}, line {lineno}: {msg}")

        ident = line.split("\t", 1)[0]
        if kind in "TR" and ident in seen:
            raise fail(f"duplicate id {ident!r}")
        if kind == "T":
            parts = line.split("\t", 2)
            if len(parts) != 3:
                raise fail("a T line needs three tab-separated fields: id, 'TYPE start end', text")
            ident, middle, ent_text = parts
            etype, _, offsets = middle.partition(" ")
            if not etype or not _FRAGMENTS.match(offsets):
                raise fail(f"expected 'TYPE start end[;start end...]', got {middle!r}")
            frags = tuple((int(a), int(b)) for a, b in (f.split(" ") for f in offsets.split(";")))
            for a, b in frags:
                if a >= b:
                    raise fail(f"empty or inverted span {a} {b}")
                if text is not None and b > len(text):
                    raise fail(f"span {a} {b} runs past the end of the text ({len(text)} characters)")
            if text is not None:
                expected = " ".join(text[a:b] for a, b in frags)
                if _visible(expected) != _visible(ent_text):
                    raise fail(f"entity text {ent_text!r} differs from the text at its offsets {expected!r}")
            start, end = frags[0][0], frags[-1][1]
            if len(frags) > 1:
                doc.warnings["discontinuous entity"] += 1
                start, end = min(a for a, _ in frags), max(b for _, b in frags)
            doc.entities.append(Entity(ident, etype, start, end, ent_text, frags))
        elif kind == "R":
            fields = line.split("\t")
            # brat tolerates a trailing tab (and the corpus has some): an empty third field.
            if len(fields) < 2 or any(f.strip() for f in fields[2:]):
                raise fail("an R line needs two tab-separated fields: id and 'TYPE Arg1:T.. Arg2:T..'")
            args = fields[1].split()
            if len(args) != 3 or not args[1].startswith("Arg1:") or not args[2].startswith("Arg2:"):
                raise fail(f"expected 'TYPE Arg1:<id> Arg2:<id>', got {fields[1]!r}")
            doc.relations.append(Relation(fields[0], args[0], args[1][5:], args[2][5:]))
        else:
            doc.other_lines.append(line)
            doc.warnings[f"{kind} line kept but not modelled"] += 1
        seen.add(ident)
    keys = [(r.type, r.arg1, r.arg2) for r in doc.relations]
    if len(set(keys)) != len(keys):
        doc.warnings["duplicate relation (same type and arguments)"] += len(keys) - len(set(keys))
    known = {e.id for e in doc.entities}
    for rel in doc.relations:
        for arg in (rel.arg1, rel.arg2):
            if arg not in known:
                raise BratFormatError(f"{source}: relation {rel.id} refers to unknown entity {arg!r}")
    return doc


def read_document(txt_path: Path, name: str | None = None) -> Document:
    """Read `X.txt` and, when present, `X.ann` beside it (a missing `.ann` means no annotations)."""
    text = read_text(txt_path)
    ann_path = txt_path.with_suffix(".ann")
    ann = read_text(ann_path) if ann_path.exists() else ""
    doc = parse_ann(ann, text, source=str(ann_path))
    doc.name = name if name is not None else txt_path.stem
    return doc


def read_corpus(root: Path) -> list[Document]:
    """Every `.txt` under `root` (recursively) with its `.ann`, named by path relative to `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of brat .txt/.ann files")
    paths = sorted(root.rglob("*.txt"))
    return [read_document(p, p.relative_to(root).with_suffix("").as_posix()) for p in paths]


def format_ann(
    entities: Sequence[Entity], relations: Iterable[Relation] = (), other_lines: Iterable[str] = ()
) -> str:
    """The `.ann` text for these annotations; ids are written as given."""
    lines = []
    for e in entities:
        frags = e.fragments or ((e.start, e.end),)
        offsets = ";".join(f"{a} {b}" for a, b in frags)
        lines.append(f"{e.id}\t{e.type} {offsets}\t{_visible(e.text)}")
    lines.extend(f"{r.id}\t{r.type} Arg1:{r.arg1} Arg2:{r.arg2}" for r in relations)
    lines.extend(other_lines)
    return "".join(line + "\n" for line in lines)


def score_notes(entities: Sequence[Entity], relations: Iterable[Relation] = ()) -> list[str]:
    """brat `AnnotatorNotes` lines with the score of each scored annotation (`#1\tAnnotatorNotes T1\t
    score=0.9312`): brat shows a note when the pointer rests on its annotation, and reads such lines back."""
    scored = [x for x in (*entities, *relations) if x.score is not None]
    return [f"#{i}\tAnnotatorNotes {x.id}\tscore={x.score:.4f}" for i, x in enumerate(scored, start=1)]


def renumber(
    entities: Iterable[Entity], relations: Iterable[Relation] = ()
) -> tuple[list[Entity], list[Relation]]:
    """Fresh ids T1.., R1.. in reading order (entities by offset), relations pointing at the new ids.

    The same annotations always get the same ids, so output is stable across runs.
    """
    ordered = sorted(entities, key=lambda e: (e.start, e.end, e.type))
    new_id = {e.id: f"T{i}" for i, e in enumerate(ordered, start=1)}
    new_entities = [replace(e, id=new_id[e.id]) for e in ordered]
    rels = sorted(relations, key=lambda r: (int(new_id[r.arg1][1:]), int(new_id[r.arg2][1:]), r.type))
    new_relations = [
        replace(r, id=f"R{i}", arg1=new_id[r.arg1], arg2=new_id[r.arg2]) for i, r in enumerate(rels, start=1)
    ]
    return new_entities, new_relations
