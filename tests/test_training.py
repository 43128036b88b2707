"""A tiny configuration trains NER and relation models end to end: the loss falls and the output is brat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_corpus, tiny_encoder
from transformers import AutoTokenizer

from app.cli import main
from app.pipeline import Pipeline
from app.text.brat import format_ann, parse_ann, read_corpus
from app.text.encode import encode_document
from app.text.subwords import WordPieces
from training.config import TrainConfig
from training.data import re_examples
from training.models import load_tagger, torch_tagger
from training.scripts.sweep import finished, load_plan, sweep, table

ROOT = Path(__file__).resolve().parents[1]


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


def test_copies_with_rare_relation_types_are_repeated(tiny: tuple[Path, Path]) -> None:
    corpus, encoder = tiny
    docs = [encode_document(d) for d in read_corpus(corpus)]
    pieces = WordPieces(AutoTokenizer.from_pretrained(encoder).backend_tokenizer)
    plain = re_examples(docs, pieces, 64, typed=False)
    positive = sum(any(t != "0" for t in tags) for d in docs for s in d.sentences for tags in s.relation_tags)
    assert 0 < positive < len(plain)
    everything_rare = re_examples(docs, pieces, 64, typed=False, rare_repeat=3, rare_below=10**9)
    assert len(everything_rare) == len(plain) + 2 * positive
    nothing_rare = re_examples(docs, pieces, 64, typed=False, rare_repeat=3, rare_below=1)
    assert len(nothing_rare) == len(plain)


def test_time_limit_ends_the_run_with_its_figures(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, encoder = tiny
    metrics = run("ner", corpus, encoder, tmp_path / "ner", "time_limit=0.001")
    assert metrics["stopped_by_time_limit"] is True
    assert [h["step"] for h in metrics["best_epoch_history"]] == [1]  # one step, then evaluated
    assert "ner" in metrics["dev"] and (tmp_path / "ner" / "best" / "tagger.json").exists()
    # Cut inside its first epoch: run again, it finishes that epoch from the next batch, no batch twice.
    history = run("ner", corpus, encoder, tmp_path / "ner", "epochs=1")["best_epoch_history"]
    full = run("ner", corpus, encoder, tmp_path / "full", "epochs=1")["best_epoch_history"]
    assert history[0]["partial"] is True and 0 < history[0]["epoch"] < 1
    assert [h["epoch"] for h in history[1:]] == [1] and "partial" not in history[1]
    assert history[1]["step"] == full[0]["step"] > 1


def test_sweep_runs_side_by_side_and_tabulates(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, encoder = tiny
    common = [f"corpus={corpus}", f"encoder={encoder}", "epochs=1", "batch_size=8", "dev_fraction=0.25"]
    plan = {
        "parallel": 2,
        "run": [
            {"name": "a", "task": "ner", "config": "training/configs/ner.toml", "set": [*common, "seed=1"]},
            {"name": "b", "task": "ner", "config": "training/configs/ner.toml", "set": [*common, "seed=2"]},
        ],
    }
    results = sweep(plan, tmp_path, threads=1)
    assert {r["returncode"] for r in results.values()} == {0}
    assert all(0 <= r["dev"]["ner"]["f1"] <= 1 for r in results.values())
    assert table(results).count("\n| ") == 2 and (tmp_path / "a.log").stat().st_size > 0
    # Through their last epoch, so `--pending` leaves them out; a longer schedule would resume them.
    assert all(finished(r, tmp_path) for r in plan["run"])
    assert not finished({**plan["run"][0], "set": [*common, "epochs=2"]}, tmp_path)


@pytest.mark.parametrize("plan", sorted(ROOT.glob("training/configs/sweep-*.toml")), ids=lambda p: p.stem)
def test_committed_plans_load_as_training_configs(plan: Path) -> None:
    # A plan is run on a borrowed GPU, minutes at a time: a typo found there costs the lease.
    runs = load_plan(plan)["run"]
    assert len({r["name"] for r in runs}) == len(runs)
    for r in runs:
        config = TrainConfig.load(ROOT / r["config"], r.get("set", []))
        assert config.task == r["task"]


def test_a_shallow_student_keeps_its_first_layers(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    from app.text.tags import RELATION_LABELS
    from training.models import new_tagger, save_tagger

    _, encoder = tiny
    labels = {"relation": RELATION_LABELS}
    full, _ = new_tagger(str(encoder), labels, 0.1, True)
    student, tokenizer = new_tagger(str(encoder), labels, 0.1, True, layers=1)
    assert len(full.encoder.encoder.layer) == 2 and len(student.encoder.encoder.layer) == 1
    kept, first = student.encoder.encoder.layer[0].state_dict(), full.encoder.encoder.layer[0].state_dict()
    assert all(torch.equal(kept[k], first[k]) for k in first)  # the pretrained first layer, as it was
    save_tagger(student, tokenizer, tmp_path / "student", {"max_pieces": 64})
    reloaded, _, _ = load_tagger(tmp_path / "student")
    assert len(reloaded.encoder.encoder.layer) == 1
    with pytest.raises(ValueError, match="cannot keep 3 encoder layers"):
        new_tagger(str(encoder), labels, 0.1, True, layers=3)
