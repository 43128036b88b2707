"""Documents to word-level tags and back: the one bridge between brat offsets and what the models see.

`encode_document` turns a gold document into sentences whose words carry BIO tags and one relation tag
sequence per entity; `decode_document` turns word-level spans and relations (gold or predicted) back into
brat entities and relations with character offsets. The lossless round trip is one call after the other.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.text.brat import Document, Entity, Relation, renumber
from app.text.segment import Sentence, segment
from app.text.tags import (
    WordRelation,
    WordSpan,
    align,
    encode_bio,
    encode_relations,
)


@dataclass
class EncodedSentence:
    """One sentence with its gold annotation on words.

    `spans[k]` is an entity; `relation_tags[k]` is the tag sequence of the copy where `spans[k]` is marked.
    """

    sentence: Sentence
    spans: list[WordSpan]
    relations: list[WordRelation]
    bio: list[str]
    relation_tags: list[list[str]]


@dataclass
class EncodedDocument:
    name: str
    text: str
    sentences: list[EncodedSentence]
    # What could not be represented, by reason; empty for a lossless encoding.
    lost: Counter[str] = field(default_factory=Counter)


def encode_document(doc: Document) -> EncodedDocument:
    """Segment a gold document so that every entity sits on whole words of one sentence, then tag it.

    Entities that BIO cannot hold (discontinuous, or overlapping an earlier one) and relations that lose an
    argument or collide with another relation are counted in `lost` with their reason, never dropped
    silently.
    """
    lost: Counter[str] = Counter()
    by_id = doc.entity_by_id()
    keep = [(e.start, e.end) for e in doc.entities]
    for r in doc.relations:
        a, b = by_id[r.arg1], by_id[r.arg2]
        keep.append((min(a.start, b.start), max(a.end, b.end)))
    cuts = [x for e in doc.entities if not e.discontinuous for x in (e.start, e.end)]
    sentences = segment(doc.text, keep_together=keep, cuts=cuts)

    # Place each entity on the words of its sentence.
    starts = [s.start for s in sentences]
    placed: dict[str, tuple[int, int]] = {}  # entity id -> (sentence index, span index)
    per_sentence: list[list[tuple[str, WordSpan]]] = [[] for _ in sentences]
    for e in sorted(doc.entities, key=lambda e: (e.start, -e.end)):
        if e.discontinuous:
            lost["entity: discontinuous"] += 1
            continue
        si = _sentence_index(starts, e.start)
        word_range = align(sentences[si].words, e.start, e.end) if si is not None else None
        if word_range is None:
            lost["entity: not on word boundaries"] += 1
            continue
        per_sentence[si].append((e.id, WordSpan(e.type, *word_range)))

    encoded = []
    for si, sentence in enumerate(sentences):
        ids = [i for i, _ in per_sentence[si]]
        spans = [s for _, s in per_sentence[si]]
        bio, overlapping = encode_bio(len(sentence.words), spans)
        lost["entity: overlaps another"] += len(overlapping)
        kept = [(ids[k], spans[k]) for k in range(len(spans)) if k not in overlapping]
        for k, (eid, _) in enumerate(kept):
            placed[eid] = (si, k)
        encoded.append(EncodedSentence(sentence, [s for _, s in kept], [], bio, []))

    for r in doc.relations:
        a, b = placed.get(r.arg1), placed.get(r.arg2)
        if a is None or b is None:
            lost["relation: an argument was lost"] += 1
        elif a[0] != b[0]:
            lost["relation: arguments in different sentences"] += 1
        else:
            encoded[a[0]].relations.append(WordRelation(r.type, a[1], b[1]))

    for enc in encoded:
        enc.relation_tags, collided = encode_relations(len(enc.sentence.words), enc.spans, enc.relations)
        lost["relation: collides with another on the same pair"] += len(collided)
    return EncodedDocument(doc.name, doc.text, encoded, +lost)


def _sentence_index(starts: Sequence[int], offset: int) -> int | None:
    i = bisect.bisect_right(starts, offset) - 1
    return i if i >= 0 else None


def decode_document(
    name: str,
    text: str,
    sentences: Sequence[Sentence],
    spans: Sequence[Sequence[WordSpan]],
    relations: Sequence[Sequence[WordRelation]],
) -> Document:
    """A brat document from word-level spans and relations per sentence; ids numbered in reading order."""
    entities: list[Entity] = []
    rels: list[Relation] = []
    for si, sentence in enumerate(sentences):
        ids = []
        for span in spans[si]:
            start, end = sentence.words[span.first][0], sentence.words[span.last][1]
            ids.append(f"S{si}E{len(ids)}")
            entities.append(Entity(ids[-1], span.type, start, end, text[start:end], score=span.score))
        rels.extend(
            Relation(f"S{si}R{k}", r.type, ids[r.arg1], ids[r.arg2], r.score)
            for k, r in enumerate(relations[si])
        )
    entities, rels = renumber(entities, rels)
    return Document(name, text, entities, rels)
