"""Property tests on the text path: for any text, segmentation covers it without overlaps, decoded spans
index the text exactly, and brat written by us reads back unchanged."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from app.text.brat import Entity, Relation, format_ann, parse_ann, renumber
from app.text.encode import decode_document
from app.text.segment import segment
from app.text.tags import ENTITY_TYPES, RELATION_TYPES, WordRelation, WordSpan, decode_bio, encode_bio

# Any Unicode, weighted towards what reports contain: Cyrillic, digits, punctuation, CRLF, tabs, emoji,
# combining marks, and long runs without spaces.
PIECES = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁ0123456789 -.,;:«»\"'()/№%", max_size=60),
    st.sampled_from(["\r\n", "\n", "\t", " ", "😀", "👍🏽", "и\u0306", "\u00ad", "\u200b", "\x00", "\u2028"]),
    st.text(alphabet="аб1-", min_size=200, max_size=600),
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
        pairs = [(i, j) for i in range(len(sp)) for j in range(len(sp)) if i != j]
        picked = data.draw(st.lists(st.sampled_from(pairs), max_size=3, unique=True)) if pairs else []
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
