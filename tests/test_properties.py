"""Property tests on the text path: for any text, segmentation covers it without overlaps, decoded spans
index the text exactly, and brat written by us reads back unchanged; and the same for what the real
pipeline (the tiny bundle on ONNX Runtime) and the running service return."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.service import Extractor
from app.settings import Settings
from app.text.brat import Entity, Relation, format_ann, parse_ann, read_corpus, renumber
from app.text.encode import decode_document
from app.text.segment import segment
from app.text.tags import ENTITY_TYPES, RELATION_TYPES, WordRelation, WordSpan, decode_bio, encode_bio

# Any Unicode, weighted towards what reports contain: Cyrillic, digits, punctuation, CRLF, tabs, emoji,
# combining marks, and long runs without spaces; and towards what clients send by mistake: other scripts,
# control and format characters, characters outside the BMP, marks with nothing to combine with, and one
# very long word in any script.
PIECES = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁ0123456789 -.,;:«»\"'()/№%", max_size=60),
    st.sampled_from(["\r\n", "\n", "\t", " ", "😀", "👍🏽", "и\u0306", "\u00ad", "\u200b", "\x00", "\u2028"]),
    st.text(alphabet="аб1-", min_size=200, max_size=600),
    st.text(alphabet=st.characters(min_codepoint=0x10000), min_size=1, max_size=20),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=10),
    st.text(alphabet=st.characters(categories=["Mn", "Mc", "Me"]), min_size=1, max_size=10),
    st.text(
        alphabet=st.characters(exclude_categories=["Zs", "Zl", "Zp", "Cc", "Cs"]), min_size=300, max_size=800
    ),
)
TEXTS = st.lists(PIECES, max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_segmentation_covers_every_visible_character_once(text: str) -> None:
    covered = [0] * len(text)
    previous_end = 0
    for s in segment(text):
        assert previous_end <= s.start < s.end <= len(text)
        previous_end = s.end
        for a, b in s.words:
            assert s.start <= a < b <= s.end
            for i in range(a, b):
                covered[i] += 1
    for ch, n in zip(text, covered, strict=True):
        assert n == (0 if ch.isspace() else 1), (ch, n)


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.data())
def test_any_tagging_decodes_to_spans_that_index_the_text(text: str, data: st.DataObject) -> None:
    sentences = segment(text)
    labels = ["O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in "BI")]
    spans = [
        decode_bio(data.draw(st.lists(st.sampled_from(labels), min_size=len(s.words), max_size=len(s.words))))
        for s in sentences
    ]
    relations = []
    for sp in spans:
        # Drawn as two indices, not from a list of all pairs: sentences of a thousand words occur.
        index = st.integers(0, len(sp) - 1)
        pairs = st.tuples(index, index).filter(lambda p: p[0] != p[1])
        picked = data.draw(st.lists(pairs, max_size=3, unique=True)) if len(sp) > 1 else []
        relations.append([WordRelation(data.draw(st.sampled_from(RELATION_TYPES)), i, j) for i, j in picked])
    doc = decode_document("d", text, sentences, spans, relations)
    for e in doc.entities:
        assert 0 <= e.start < e.end <= len(text)
        assert text[e.start : e.end] == e.text
    again = parse_ann(format_ann(doc.entities, doc.relations), text)
    assert [e.span for e in again.entities] == [e.span for e in doc.entities]
    assert again.relations == doc.relations


@settings(max_examples=100, deadline=None)
@given(TEXTS, st.data())
def test_bio_round_trip_on_words(text: str, data: st.DataObject) -> None:
    for s in segment(text):
        n = len(s.words)
        cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=6)) | {0, n})
        spans = [
            WordSpan(data.draw(st.sampled_from(ENTITY_TYPES)), a, b - 1)
            for a, b in itertools.pairwise(cuts)
            if data.draw(st.booleans())
        ]
        tags, lost = encode_bio(n, spans)
        assert lost == [] and decode_bio(tags) == spans


def test_renumbered_ids_are_unique_and_relations_follow() -> None:
    text = "рост доходов населения"
    ents = [Entity("a", "CMP", 0, 4, "рост"), Entity("b", "MET", 5, 22, text[5:22])]
    new, rels = renumber(ents, [Relation("x", "NPS", "b", "a")])
    assert len({e.id for e in new}) == len(new)
    assert rels[0].arg1 == "T2"


@settings(max_examples=150, deadline=None)
@given(TEXTS.filter(bool), st.data())
def test_brat_round_trip_of_any_annotations(text: str, data: st.DataObject) -> None:
    """Any spans (overlapping, splitting a CRLF or a surrogate pair's code point, holding tabs and line
    breaks) and any relations between them: written by us, read back the same."""
    spans = data.draw(
        st.lists(st.tuples(st.integers(0, len(text) - 1), st.integers(1, len(text))), max_size=12).map(
            lambda pairs: [(a, b) for a, b in pairs if a < b]
        )
    )
    entities = [
        Entity(f"T{i}", data.draw(st.sampled_from(ENTITY_TYPES)), a, b, text[a:b])
        for i, (a, b) in enumerate(spans, start=1)
    ]
    ids = [e.id for e in entities]
    relations = (
        [
            Relation(f"R{i}", data.draw(st.sampled_from(RELATION_TYPES)), a, b)
            for i, (a, b) in enumerate(
                data.draw(st.lists(st.tuples(*[st.sampled_from(ids)] * 2), max_size=8)), 1
            )
        ]
        if ids
        else []
    )
    again = parse_ann(format_ann(entities, relations), text)
    assert [(e.id, e.type, e.start, e.end) for e in again.entities] == [
        (e.id, e.type, e.start, e.end) for e in entities
    ]
    # The one change the format forces: a line break inside an entity's text is written as a space.
    assert [e.text for e in again.entities] == [
        e.text.replace("\r", " ").replace("\n", " ") for e in entities
    ]
    assert again.relations == relations


def check_document(text: str, entities: list[dict], relations: list[dict]) -> None:
    """What every answer promises: spans that index the text as sent, non-empty and in order without
    overlaps (BIO holds no nesting), unique ids, relations between returned entities, and brat that reads
    back the same."""
    previous_end = 0
    for e in entities:
        assert previous_end <= e["start"] < e["end"] <= len(text), (e, previous_end)
        assert text[e["start"] : e["end"]] == e["text"]
        previous_end = e["end"]
    ids = [e["id"] for e in entities]
    assert len(set(ids)) == len(ids)
    assert all(r["arg1"] in ids and r["arg2"] in ids for r in relations)
    ents = [Entity(e["id"], e["type"], e["start"], e["end"], e["text"]) for e in entities]
    rels = [Relation(r["id"], r["type"], r["arg1"], r["arg2"]) for r in relations]
    again = parse_ann(format_ann(ents, rels), text)
    assert [e.span for e in again.entities] == [e.span for e in ents] and again.relations == rels


def with_corpus(tiny_checkpoints: tuple[Path, Path, Path]) -> st.SearchStrategy[str]:
    """Any text, with real corpus lines spliced in so that the tiny model finds entities to check."""
    lines = [line for d in read_corpus(tiny_checkpoints[0]) for line in d.text.splitlines(keepends=True)]
    return st.lists(st.one_of(PIECES, st.sampled_from(lines)), max_size=10).map("".join)


def test_pipeline_output_indexes_any_text(
    tiny_bundle: Path, tiny_checkpoints: tuple[Path, Path, Path]
) -> None:
    extractor = Extractor(Settings(_env_file=None, bundle=tiny_bundle))
    found = {"entities": 0, "relations": 0}
    # The whole tiny corpus as one text, always among the examples: the tiny model's entities are sparse,
    # and 60 random splices of its lines can miss all of them.
    corpus_text = "".join(d.text for d in read_corpus(tiny_checkpoints[0]))

    @settings(max_examples=60, deadline=None, database=None)
    @example(corpus_text)
    @given(with_corpus(tiny_checkpoints))
    def any_text(text: str) -> None:
        doc = extractor.extract(text).document
        entities = [
            {"id": e.id, "type": e.type, "start": e.start, "end": e.end, "text": e.text} for e in doc.entities
        ]
        relations = [{"id": r.id, "type": r.type, "arg1": r.arg1, "arg2": r.arg2} for r in doc.relations]
        check_document(text, entities, relations)
        found["entities"] += len(entities)
        found["relations"] += len(relations)

    any_text()
    assert found["entities"] > 0, "the property was checked on real predictions"


def test_service_answers_index_any_text(server: str, tiny_checkpoints: tuple[Path, Path, Path]) -> None:
    """The same through HTTP and JSON (non-BMP characters, escapes, CRLF), in JSON and in brat."""
    found = {"entities": 0}
    # As above: the whole tiny corpus always among the examples, so that some predictions are checked.
    corpus_text = "".join(d.text for d in read_corpus(tiny_checkpoints[0]))

    @settings(max_examples=30, deadline=None, database=None)
    @example(corpus_text)
    @given(with_corpus(tiny_checkpoints))
    def any_text(text: str) -> None:
        r = httpx.post(f"{server}/extract", json={"text": text}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        check_document(text, body["entities"], body["relations"])
        brat = httpx.post(f"{server}/extract?format=brat", json={"text": text}, timeout=60)
        doc = parse_ann(brat.text, text)
        assert [(e.id, e.start, e.end) for e in doc.entities] == [
            (e["id"], e["start"], e["end"]) for e in body["entities"]
        ]
        found["entities"] += len(body["entities"])

    any_text()
    assert found["entities"] > 0, "the property was checked on real predictions"
