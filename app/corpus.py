"""Corpus-level commands: statistics and the lossless round trip through our tag schemes."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from app.text.brat import Document, format_ann, read_corpus, write_text
from app.text.encode import EncodedDocument, decode_document, encode_document
from app.text.segment import segment
from app.text.tags import Signature, decode_bio, decode_relations, merge_relations


@dataclass
class CorpusStats:
    documents: int = 0
    sentences: int = 0
    words: int = 0
    entities: Counter[str] = field(default_factory=Counter)
    relations: Counter[str] = field(default_factory=Counter)
    # How far the gold-aware segmentation (training) moved from the plain one (serving).
    sentences_joined: int = 0
    words_cut: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)

    def add(self, doc: Document, enc: EncodedDocument) -> None:
        plain = segment(doc.text)
        self.documents += 1
        self.sentences += len(enc.sentences)
        words = sum(len(s.sentence.words) for s in enc.sentences)
        self.words += words
        self.sentences_joined += len(plain) - len(enc.sentences)
        self.words_cut += words - sum(len(s.words) for s in plain)
        self.entities.update(e.type for e in doc.entities)
        self.relations.update(r.type for r in doc.relations)
        self.lost.update(enc.lost)
        self.warnings.update(doc.warnings)

    def render(self) -> str:
        lines = [
            f"documents  {self.documents:>8,}",
            f"sentences  {self.sentences:>8,}  ({self.sentences_joined:,} razdel/line boundaries removed "
            "to keep a gold entity or relation whole)",
            f"words      {self.words:>8,}  ({self.words_cut:,} extra cuts at gold entity boundaries)",
            f"entities   {sum(self.entities.values()):>8,}",
            *(f"  {t:<8} {n:>8,}" for t, n in sorted(self.entities.items())),
            f"relations  {sum(self.relations.values()):>8,}",
            *(f"  {t:<8} {n:>8,}" for t, n in sorted(self.relations.items())),
            f"cannot be represented: {sum(self.lost.values()):,}",
            *(f"  {reason}: {n:,}" for reason, n in sorted(self.lost.items())),
        ]
        if self.warnings:
            lines.append("reader warnings:")
            lines.extend(f"  {w}: {n:,}" for w, n in sorted(self.warnings.items()))
        return "\n".join(lines)


def corpus_stats(docs: Iterable[Document]) -> CorpusStats:
    stats = CorpusStats()
    for doc in docs:
        stats.add(doc, encode_document(doc))
    return stats


def roundtrip_document(doc: Document) -> tuple[Document, EncodedDocument]:
    """Gold -> segmentation, BIO and relation tags -> decoded back to brat, as a model's output would be."""
    enc = encode_document(doc)
    spans, relations = [], []
    for s in enc.sentences:
        decoded = decode_bio(s.bio)
        found = [r for k, tags in enumerate(s.relation_tags) for r in decode_relations(k, tags, decoded)]
        spans.append(decoded)
        relations.append(merge_relations(found))
    out = decode_document(doc.name, doc.text, [s.sentence for s in enc.sentences], spans, relations)
    return out, enc


def roundtrip_corpus(gold_dir: Path, out_dir: Path, progress: bool = True) -> CorpusStats:
    """Write every gold document of `gold_dir` through the round trip into `out_dir` (.txt copied, .ann
    rewritten), keeping relative paths so `renersans evaluate gold_dir out_dir` pairs them."""
    stats = CorpusStats()
    gold_dir, out_dir = Path(gold_dir), Path(out_dir)
    for doc in tqdm(read_corpus(gold_dir), desc="round trip", unit="doc", disable=not progress):
        out, enc = roundtrip_document(doc)
        stats.add(doc, enc)
        target = out_dir / f"{doc.name}.ann"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gold_dir / f"{doc.name}.txt", target.with_suffix(".txt"))
        write_text(target, format_ann(out.entities, out.relations))
    return stats


def relation_signatures(docs: Iterable[Document]) -> Counter[Signature]:
    """How often each (Arg1 type, relation, Arg2 type) occurs in `docs`' gold relations."""
    counts: Counter[Signature] = Counter()
    for doc in docs:
        entities = doc.entity_by_id()
        for rel in doc.relations:
            if rel.arg1 in entities and rel.arg2 in entities:
                counts[(entities[rel.arg1].type, rel.type, entities[rel.arg2].type)] += 1
    return counts
