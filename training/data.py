"""Training examples from the corpus: the text-wise dev split, NER windows and marked relation copies."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.text.encode import EncodedDocument
from app.text.subwords import WordPieces, context_window, mark, tagging_inputs
from app.text.tags import BIO_LABELS, NO_RELATION, RELATION_LABELS

IGNORE = -100  # cross-entropy's ignore index: markers, padding and continuation pieces carry no label


def split_documents(names: Sequence[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Text-wise split: whole documents go to train or dev, chosen by a seeded shuffle of sorted names."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_dev = round(len(order) * dev_fraction)
    return sorted(order[n_dev:]), sorted(order[:n_dev])


def corpus_hash(root: Path) -> str:
    """SHA-256 over every .txt and .ann under `root` (paths and bytes), to tie a model to its data."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.suffix in (".txt", ".ann"):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Example:
    ids: list[int]
    first: list[int]  # position of each labelled word's first piece
    labels: dict[str, list[int]]  # head name -> class id per word (IGNORE for markers)


BIO_ID = {t: i for i, t in enumerate(BIO_LABELS)}
REL_ID = {t: i for i, t in enumerate(RELATION_LABELS)}


def ner_examples(
    docs: Sequence[EncodedDocument], pieces: WordPieces, max_pieces: int, context: int = 0
) -> list[Example]:
    """One example per sentence, or per window of a sentence longer than the model, with up to `context`
    pieces of the document's neighbouring words on either side (read, not labelled)."""
    out = []
    for doc in docs:
        sentences = [[doc.text[a:b] for a, b in s.sentence.words] for s in doc.sentences]
        for si, a, b, p in tagging_inputs(pieces, sentences, max_pieces, context):
            out.append(Example(p.ids, p.first, {"entity": [BIO_ID[t] for t in doc.sentences[si].bio[a:b]]}))
    return out


def re_examples(
    docs: Sequence[EncodedDocument],
    pieces: WordPieces,
    max_pieces: int,
    typed: bool,
    keep_negatives: float = 1.0,
    seed: int = 0,
    rare_repeat: int = 1,
    rare_below: int = 0,
) -> list[Example]:
    """One example per (sentence, entity): markers around the entity, the sentence cut to a window around
    it, every word labelled with its relation to the marked entity and with its own BIO tag.

    A copy that holds a relation type seen in fewer than `rare_below` training copies is repeated
    `rare_repeat` times (the paper's code repeated its rarest types tenfold)."""
    budget = max_pieces - pieces.special
    rng = random.Random(seed)
    rare = _rare_types(docs, rare_below) if rare_repeat > 1 else set()
    out = []
    for doc in docs:
        for s in doc.sentences:
            words = [doc.text[a:b] for a, b in s.sentence.words]
            for span, rel_tags in zip(s.spans, s.relation_tags, strict=True):
                if (
                    keep_negatives < 1.0
                    and all(t == "0" for t in rel_tags)
                    and rng.random() >= keep_negatives
                ):
                    continue
                marked, index = mark(words, span, typed)
                lo, hi = context_window(
                    pieces.lengths(marked), index[span.first] - 1, index[span.last] + 1, budget
                )
                rel = [IGNORE] * len(marked)
                ent = [IGNORE] * len(marked)
                for k, j in enumerate(index):
                    rel[j] = REL_ID[rel_tags[k]]
                    ent[j] = BIO_ID[s.bio[k]]
                p = pieces.encode(marked[lo:hi], max_pieces)
                example = Example(p.ids, p.first, {"relation": rel[lo:hi], "entity": ent[lo:hi]})
                out.extend([example] * (rare_repeat if rare & _types(rel_tags) else 1))
    return out


def _types(rel_tags: Sequence[str]) -> set[str]:
    return {t.split(":")[0] for t in rel_tags if t != NO_RELATION}


def _rare_types(docs: Sequence[EncodedDocument], below: int) -> set[str]:
    """Relation types held by fewer than `below` marked copies of the training documents."""
    counts: dict[str, int] = {}
    for doc in docs:
        for s in doc.sentences:
            for rel_tags in s.relation_tags:
                for t in _types(rel_tags):
                    counts[t] = counts.get(t, 0) + 1
    return {t for t, n in counts.items() if n < below}
