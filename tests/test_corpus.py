"""The foundation's promise on the real corpus: everything read, nothing lost in the round trip."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import main
from app.corpus import corpus_stats, relation_signatures
from app.text.brat import read_corpus


def test_corpus_counts(corpus_dir: Path) -> None:
    docs = read_corpus(corpus_dir)
    assert len(docs) == 188
    assert sum(len(d.entities) for d in docs) == 54_388
    assert sum(len(d.relations) for d in docs) == 12_644
    for d in docs:
        for e in d.entities:
            assert d.text[e.start : e.end] == e.text


def test_relation_signatures_count_every_relation_by_its_arguments_types(corpus_dir: Path) -> None:
    docs = read_corpus(corpus_dir)
    counts = relation_signatures(docs)
    assert sum(counts.values()) == 12_644
    # A task (TSK) from a BIN to an ECO entity is the commonest; the arguments keep their order.
    assert counts.most_common(1)[0][0] == ("BIN", "TSK", "ECO")
    assert counts[("BIN", "TSK", "ECO")] > 10 * counts[("ECO", "TSK", "BIN")]


def test_stats_report_nothing_lost(corpus_dir: Path) -> None:
    stats = corpus_stats(read_corpus(corpus_dir / "train_part_1"))
    assert stats.lost == {}
    assert stats.sentences > stats.documents > 0
    assert sum(stats.entities.values()) > 10_000


def test_roundtrip_then_evaluate_is_perfect(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "roundtrip"
    assert main(["corpus", "roundtrip", str(corpus_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cannot be represented: 0" in printed
    assert len(list(out.rglob("*.ann"))) == 188
    scores = tmp_path / "scores.json"
    assert main(["evaluate", str(corpus_dir), str(out), "--json", str(scores)]) == 0
    ner, re = json.loads(scores.read_text())
    assert ner["micro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 54_388, "fp": 0, "fn": 0}
    assert re["micro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 12_644, "fp": 0, "fn": 0}
    assert ner["missing_predictions"] == re["missing_predictions"] == []


def test_gold_entities_never_are_a_bare_negation(corpus_dir: Path) -> None:
    # The ground for `attach_negations`: the annotators put "не" inside the entity it qualifies.
    bare = starting = 0
    for doc in read_corpus(corpus_dir):
        for e in doc.entities:
            words = doc.text[e.start : e.end].lower().split()
            bare += words == ["не"]
            starting += len(words) > 1 and words[0] == "не"
    assert bare == 0 and starting > 300
