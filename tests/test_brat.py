from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import BratFormatError
from app.text.brat import Entity, Relation, format_ann, parse_ann, read_document, renumber, write_text


def entity_line(ident: str, etype: str, text: str, start: int, end: int) -> str:
    return f"{ident}\t{etype} {start} {end}\t{text[start:end]}\n"


# (name, text, start, end): each entity written by us must read back with the same offsets and text.
EDGE_CASES = [
    ("offset 0", "Рост экономики", 0, 4),
    ("end of text", "Рост экономики", 5, 14),
    ("BOM counts as a character", "\ufeffРост экономики", 1, 5),
    ("CRLF counts as two characters", "Рост\r\nэкономики региона", 6, 15),
    ("tab inside entity text", "спирто \tсодержащей продукции", 0, 18),
    ("Latin and digits inside Cyrillic", "внедрение IT-решений в 2019г", 10, 28),
    ("ё", "объём ёмкости", 0, 13),
    ("non-BMP emoji before entity", "😀😀 рост ВРП", 3, 11),
    ("combining mark", "и\u0306ошкар-Олы", 0, 5),
    ("line separator inside entity", "доля\u2028населения", 0, 14),
]


@pytest.mark.parametrize(("name", "text", "start", "end"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_written_entities_read_back(name: str, text: str, start: int, end: int) -> None:
    ents = [Entity("T1", "ECO", start, end, text[start:end])]
    doc = parse_ann(format_ann(ents), text)
    assert [(e.type, e.start, e.end) for e in doc.entities] == [("ECO", start, end)]
    assert doc.entities[0].text == text[start:end]


def test_files_byte_exact(tmp_path: Path) -> None:
    text = "\ufeffПаспорт\r\nпрограммы\tРеспублики Коми 😀\n"
    txt = tmp_path / "doc.txt"
    write_text(txt, text)
    assert txt.read_bytes() == text.encode("utf-8")
    start = text.index("Республики")
    write_text(txt.with_suffix(".ann"), entity_line("T1", "INST", text, start, start + 15))
    doc = read_document(txt)
    assert doc.text == text
    assert doc.entities[0].text == "Республики Коми"
    assert doc.name == "doc"


def test_empty_ann_and_missing_ann(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    write_text(txt, "")
    assert read_document(txt).entities == []
    write_text(txt.with_suffix(".ann"), "")
    doc = read_document(txt)
    assert (doc.entities, doc.relations) == ([], [])


def test_relations_keep_direction_and_trailing_tab() -> None:
    text = "повышение доходов населения"
    ann = (
        entity_line("T1", "CMP", text, 0, 9)
        + entity_line("T2", "MET", text, 10, 27)
        + "R1\tNPS Arg1:T2 Arg2:T1\t\n"
    )
    doc = parse_ann(ann, text)
    assert doc.relations == [Relation("R1", "NPS", "T2", "T1")]
    again = parse_ann(format_ann(doc.entities, doc.relations), text)
    assert again.relations == doc.relations


def test_discontinuous_kept_and_reported() -> None:
    text = "рост и снижение доходов"
    ann = "T1\tCMP 0 4;16 23\tрост доходов\n"
    doc = parse_ann(ann, text)
    (e,) = doc.entities
    assert e.discontinuous and e.fragments == ((0, 4), (16, 23))
    assert doc.warnings["discontinuous entity"] == 1
    assert format_ann(doc.entities) == ann


def test_other_lines_kept_with_counted_warning() -> None:
    text = "рост"
    ann = "T1\tCMP 0 4\tрост\n#1\tAnnotatorNotes T1\tпроверить\nA1\tNegated T1\n"
    doc = parse_ann(ann, text)
    assert doc.other_lines == ["#1\tAnnotatorNotes T1\tпроверить", "A1\tNegated T1"]
    assert doc.warnings == {"# line kept but not modelled": 1, "A line kept but not modelled": 1}
    assert format_ann(doc.entities, doc.relations, doc.other_lines) == ann


MALFORMED = [
    ("T1\tCMP 0 4\n", "three tab-separated fields", 1),
    ("T1\tCMP 0 4\tрост\nT2\tCMP four 9\tрост\n", "expected 'TYPE start end", 2),
    ("T1\tCMP 3 1\tрост\n", "empty or inverted span", 1),
    ("T1\tCMP 0 40\tрост\n", "runs past the end", 1),
    ("T1\tCMP 0 4\tрасти\n", "differs from the text", 1),
    ("T1\tCMP 0 4\tрост\nR1\tNPS T1 T1\n", "Arg1", 2),
    ("T1\tCMP 0 4\tрост\nT1\tCMP 0 4\tрост\n", "duplicate id", 2),
]


@pytest.mark.parametrize(("ann", "message", "line"), MALFORMED)
def test_malformed_lines_name_file_and_line(ann: str, message: str, line: int) -> None:
    with pytest.raises(BratFormatError, match=message) as info:
        parse_ann(ann, "рост экономики", source="doc.ann")
    assert f"doc.ann, line {line}:" in str(info.value)


def test_dangling_relation_names_the_id() -> None:
    with pytest.raises(BratFormatError, match="unknown entity 'T9'"):
        parse_ann("T1\tCMP 0 4\tрост\nR1\tNPS Arg1:T1 Arg2:T9\n", "рост экономики", source="doc.ann")


def test_renumber_is_stable_and_follows_reading_order() -> None:
    text = "рост доходов населения"
    ents = [Entity("x", "MET", 5, 22, text[5:22]), Entity("y", "CMP", 0, 4, "рост")]
    rels = [Relation("r", "NPS", "x", "y")]
    new_ents, new_rels = renumber(ents, rels)
    assert [(e.id, e.type) for e in new_ents] == [("T1", "CMP"), ("T2", "MET")]
    assert new_rels == [Relation("R1", "NPS", "T2", "T1")]
    assert renumber(list(reversed(ents)), rels) == (new_ents, new_rels)
