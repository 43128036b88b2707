"""Context beyond the sentence for the entity model (issue 23): the windows of neighbouring words built once
for training and serving, and a tiny model trained with context, exported and served with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_ner_run
from tokenizers import Tokenizer

from app.bundle import choose, onnx_tagger
from app.cli import main
from app.manifest import read_manifest
from app.pipeline import Pipeline
from app.text.brat import read_corpus
from app.text.encode import encode_document
from app.text.subwords import WordPieces, around, tagging_inputs, windows
from training.data import ner_examples
from training.from_onnx import checkpoint_from_bundle
from training.models import load_tagger, torch_tagger

ROOT = Path(__file__).resolve().parents[1]


def test_around_takes_whole_words_nearest_first_within_context_and_budget() -> None:
    lengths = [3, 1, 2, 5, 4, 1, 1, 2]
    # Up to 4 pieces a side: words 2 and 1 (2 + 1) on the left, where word 0 would pass 4; 5, 6, 7 right.
    assert around(lengths, 3, 5, 4, 100) == (1, 8)
    # A side stops at the first whole word that does not fit, however much the other side takes.
    assert around(lengths, 3, 5, 1, 100) == (3, 6)
    # The budget shares what the centre leaves equally: 9 pieces of centre in 13 leave 2 a side.
    assert around(lengths, 3, 5, 8, 13) == (2, 7)
    assert around(lengths, 3, 5, 8, 9) == (3, 5)
    assert around(lengths, 0, 8, 8, 100) == (0, 8)
    assert around(lengths, 2, 3, 0, 100) == (2, 3)


@pytest.fixture(scope="module")
def pieces() -> WordPieces:
    return WordPieces(Tokenizer.from_file(str(ROOT / "models" / "default" / "ner" / "tokenizer.json")))


@pytest.fixture(scope="module")
def sentences(corpus_dir: Path) -> list[list[str]]:
    doc = encode_document(read_corpus(corpus_dir / "train_part_1")[0])
    return [[doc.text[a:b] for a, b in s.sentence.words] for s in doc.sentences]


def test_without_context_each_window_is_its_sentences_words_alone(
    pieces: WordPieces, sentences: list[list[str]]
) -> None:
    got = tagging_inputs(pieces, sentences, 64, 0, 8)
    expected = [
        (si, a, b, pieces.encode(words[a:b], 64))
        for si, words in enumerate(sentences)
        for a, b in windows(pieces.lengths(words), 64 - pieces.special, 8)
    ]
    assert got == expected and len({si for si, *_ in got}) == len(sentences)


def test_with_context_the_centre_is_labelled_and_the_neighbours_read(
    pieces: WordPieces, sentences: list[list[str]]
) -> None:
    plain = tagging_inputs(pieces, sentences, 64, 0, 8)
    wide = tagging_inputs(pieces, sentences, 64, 16, 8)
    # The same windows of the same words get labels: only what is read around them changes.
    assert [x[:3] for x in wide] == [x[:3] for x in plain]
    grown = 0
    for (si, a, b, p), (_, _, _, q) in zip(wide, plain, strict=True):
        assert len(p.ids) <= 64 and len(p.first) == b - a
        # The labelled positions hold the window's own words' pieces, wherever the context put them.
        assert [p.ids[k] for k in p.first] == [q.ids[k] for k in q.first]
        before, after = p.first[0] - q.first[0], (len(p.ids) - p.first[-1]) - (len(q.ids) - q.first[-1])
        assert 0 <= before <= 16 and 0 <= after <= 16
        if si == 0 and a == 0:
            assert before == 0  # nothing precedes the document's first word
        grown += before + after > 0
    assert grown > len(wide) * 0.9
    # Sentence 1's window reads the end of sentence 0.
    si, a, b, p = next(x for x in wide if x[0] == 1)
    tail = pieces.encode(sentences[0][-1:]).ids[len(pieces.prefix) : -len(pieces.suffix)]
    start = p.first[0] - len(tail)
    assert p.ids[start : p.first[0]] == tail


def test_training_examples_hold_the_same_labels_with_context(corpus_dir: Path, pieces: WordPieces) -> None:
    docs = [encode_document(d) for d in read_corpus(corpus_dir / "train_part_1")[:2]]
    plain, wide = ner_examples(docs, pieces, 256, 0), ner_examples(docs, pieces, 256, 32)
    assert [e.labels for e in wide] == [e.labels for e in plain]
    assert sum(len(e.ids) for e in wide) > 2 * sum(len(e.ids) for e in plain)
    assert all(len(e.ids) <= 256 for e in wide)


@pytest.fixture(scope="module")
def context_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus slice, a tiny NER checkpoint trained reading 16 pieces on either side of each sentence)."""
    return tiny_ner_run(corpus_dir, tmp_path_factory.mktemp("context"), 3, "context=16")


def test_a_context_model_trains_exports_and_serves_reading_its_neighbours(
    context_run: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, out = context_run
    model, tok, info = load_tagger(out / "best")
    assert info["context"] == 16
    bundle = tmp_path / "bundle"
    assert (
        main(["export", str(out / "best"), str(bundle), "--corpus", str(corpus), "--variants", "fp32"]) == 0
    )
    manifest = read_manifest(bundle)
    assert manifest.models["ner"].context == 16
    assert json.loads((bundle / "manifest.json").read_text())["models"]["ner"]["context"] == 16

    # ONNX Runtime's pipeline reads the context as the torch pipeline that measured it on dev.
    served = Pipeline(ner=onnx_tagger(bundle, manifest, "ner", choose(manifest, "ner", "fp32")))
    measured = Pipeline(ner=torch_tagger(model, tok, info["max_pieces"], context=16))
    docs = read_corpus(corpus)
    for doc in docs:
        assert served.extract(doc.name, doc.text).entities == measured.extract(doc.name, doc.text).entities

    # A sentence is read with its neighbours: its outputs change when they are left out.
    words = [d.text.split() for d in docs]
    sentences = [w[i : i + 12] for w in words for i in range(0, 36, 12)]
    together = served._per_word(sentences[:3], ("entity",))["entity"]
    alone = served._per_word(sentences[1:2], ("entity",))["entity"]
    assert not np.allclose(together[1], alone[0], atol=1e-4)

    # Documents batched together never read each other: each is tagged as it is alone.
    pairs = [(d.name, d.text) for d in docs]
    assert [d.entities for d in served.extract_many(pairs)] == [
        served.extract(n, t).entities for n, t in pairs
    ]
    split = served._per_word(sentences[:6], ("entity",), documents=[0, 0, 0, 1, 1, 1])["entity"]
    first, second = (served._per_word(sentences[k : k + 3], ("entity",))["entity"] for k in (0, 3))
    for got, want in zip(split, [*first, *second], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)

    # Training further from the bundle keeps the context the model reads.
    _, _, meta = load_tagger(checkpoint_from_bundle(bundle, "ner", tmp_path / "imported"))
    assert meta["context"] == 16
