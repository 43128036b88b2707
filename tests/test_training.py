"""A tiny configuration trains NER and relation models end to end: the loss falls and the output is brat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_corpus, tiny_encoder

from app.cli import main
from app.pipeline import Pipeline
from app.text.brat import format_ann, parse_ann, read_corpus
from training.models import load_tagger, torch_tagger


@pytest.fixture(scope="module")
def tiny(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    corpus = tiny_corpus(corpus_dir, root / "corpus")
    return corpus, tiny_encoder(corpus, root / "encoder")


def run(task: str, corpus: Path, encoder: Path, out: Path, *extra: str) -> dict:
    settings = [
        f"corpus={corpus}",
        f"encoder={encoder}",
        f"output={out}",
        "epochs=4",
        "batch_size=8",
        "lr=3e-3",
        "warmup=0",
        "patience=10",
        "dev_fraction=0.25",
        *extra,
    ]
    assert main(["train", task, *[a for s in settings for a in ("--set", s)]]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ner_and_relations_train_end_to_end(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, encoder = tiny
    ner = run("ner", corpus, encoder, tmp_path / "ner")
    losses = [h["loss"] for h in ner["best_epoch_history"]]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.8
    assert (tmp_path / "ner" / "training.png").stat().st_size > 0
    assert "micro (official)" in (tmp_path / "ner" / "dev_report.md").read_text()

    re = run(
        "re",
        corpus,
        encoder,
        tmp_path / "re",
        "typed_markers=true",
        "ner_weight=0.1",
        f"ner_model={tmp_path / 'ner' / 'best'}",
    )
    losses = [h["loss"] for h in re["best_epoch_history"]]
    assert losses[-1] < losses[0] * 0.8
    assert set(re["dev"]) == {"re_gold", "end_to_end"}

    # The end-to-end pipeline on the trained pair writes brat that our reader, offsets checked, accepts.
    ner_model, ner_tok, ner_info = load_tagger(tmp_path / "ner" / "best")
    re_model, re_tok, re_info = load_tagger(tmp_path / "re" / "best")
    assert re_info["typed_markers"] is True
    pipeline = Pipeline(
        ner=torch_tagger(ner_model, ner_tok, ner_info["max_pieces"]),
        re=torch_tagger(re_model, re_tok, re_info["max_pieces"], typed_markers=True),
    )
    doc = read_corpus(corpus)[0]
    out = pipeline.extract(doc.name, doc.text)
    again = parse_ann(format_ann(out.entities, out.relations), doc.text)
    assert [e.span for e in again.entities] == [e.span for e in out.entities]
    assert all(doc.text[e.start : e.end] == e.text for e in again.entities)


def test_resume_continues_from_the_last_checkpoint(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, encoder = tiny
    out = tmp_path / "ner"
    run("ner", corpus, encoder, out, "epochs=1")
    state_before = json.loads((out / "metrics.json").read_text())["best_epoch_history"]
    resumed = run("ner", corpus, encoder, out, "epochs=2")["best_epoch_history"]
    assert resumed[0] == state_before[0]  # epoch 1 was not trained again
    assert [h["epoch"] for h in resumed] == [1, 2]
