"""The entity head's CRF: its likelihood and decoding checked against enumerating every tag sequence, and
a tiny CRF model trained, exported and served with its transitions, and trained further from its bundle."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_ner_run

from app.bundle import choose, onnx_tagger
from app.cli import main
from app.errors import BundleError
from app.manifest import read_manifest
from app.pipeline import Pipeline
from app.text.brat import read_corpus
from app.text.tags import Transitions, viterbi_bio
from training.crf import BioCRF
from training.from_onnx import checkpoint_from_bundle
from training.models import load_tagger, save_tagger, torch_tagger

LABELS = ("O", "B-MET", "I-MET", "B-ECO", "I-ECO")


def well_formed(n: int) -> list[tuple[int, ...]]:
    """Every BIO sequence of n labels from LABELS: I-X only after B-X or I-X."""
    out = []
    for path in itertools.product(range(len(LABELS)), repeat=n):
        tags = [LABELS[j] for j in path]
        if all(
            not t.startswith("I-") or (k > 0 and tags[k - 1][2:] == t[2:] and tags[k - 1] != "O")
            for k, t in enumerate(tags)
        ):
            out.append(path)
    return out


def path_score(path, emissions: np.ndarray, t: Transitions) -> float:
    score = t.start[path[0]] + t.end[path[-1]] + sum(emissions[k, j] for k, j in enumerate(path))
    return score + sum(t.pair[a][b] for a, b in itertools.pairwise(path))


def random_transitions(rng: np.random.Generator) -> Transitions:
    n = len(LABELS)
    return Transitions(
        tuple(rng.normal(size=n).tolist()),
        tuple(tuple(r) for r in rng.normal(size=(n, n)).tolist()),
        tuple(rng.normal(size=n).tolist()),
    )


def test_likelihood_is_the_gold_paths_share_of_every_well_formed_path() -> None:
    rng = np.random.default_rng(0)
    t = random_transitions(rng)
    crf = BioCRF(LABELS, t)
    emissions = rng.normal(size=(3, 4, len(LABELS)))
    gold = [(1, 2, 0, 3), (3, 4, 4, 0), (2, 0, 1, 0)]  # the last: a window that begins inside an entity
    lengths = [4, 3, 2]
    tags = torch.tensor(gold)
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    got = crf.nll(torch.tensor(emissions), tags, mask).item()

    expected = 0.0
    for row, (path, n) in enumerate(zip(gold, lengths, strict=True)):
        path = (1, *path[1:n]) if LABELS[path[0]].startswith("I-") else path[:n]  # I-MET first: B-MET
        e = emissions[row, :n]
        total = math.log(sum(math.exp(path_score(p, e, t)) for p in well_formed(n)))
        expected += total - path_score(path, e, t)
    assert got == pytest.approx(expected, rel=1e-5)

    # Its gradient reaches the transitions, and nothing comes from rows without words.
    crf.zero_grad()
    crf.nll(torch.tensor(emissions), tags, mask).backward()
    assert crf.pair.grad.abs().sum() > 0
    empty = torch.zeros((1, 4), dtype=torch.bool)
    assert crf.nll(torch.tensor(emissions[:1]), tags[:1], empty).item() == 0.0


def test_viterbi_with_transitions_finds_the_best_well_formed_path() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        t = random_transitions(rng)
        emissions = rng.normal(size=(5, len(LABELS)))
        best = max(well_formed(5), key=lambda p: path_score(p, emissions, t))
        assert viterbi_bio(emissions, LABELS, t) == [LABELS[j] for j in best]
    # Without transitions it is the plain decoding; a per-word shift of the scores changes nothing.
    shifted = emissions + rng.normal(size=(5, 1))
    assert viterbi_bio(shifted, LABELS, t) == viterbi_bio(emissions, LABELS, t)


def test_transitions_of_the_wrong_size_are_refused() -> None:
    good = {"start": [0.0] * 5, "pair": [[0.0] * 5] * 5, "end": [0.0] * 5}
    assert Transitions.from_json(good, 5).as_json() == good
    with pytest.raises(ValueError, match="must score 17 labels"):
        Transitions.from_json(good, 17)
    with pytest.raises(ValueError, match="numeric start, pair and end"):
        Transitions.from_json({"start": [0.0] * 5}, 5)


@pytest.fixture(scope="module")
def crf_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus slice, a tiny NER checkpoint trained with a CRF)."""
    return tiny_ner_run(corpus_dir, tmp_path_factory.mktemp("crf"), 8, "crf=true")


def export(checkpoint: Path, corpus: Path, bundle: Path) -> Path:
    assert main(["export", str(checkpoint), str(bundle), "--corpus", str(corpus), "--variants", "fp32"]) == 0
    return bundle


def test_a_crf_model_trains_exports_and_serves_with_its_transitions(
    crf_run: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, out = crf_run
    losses = [h["loss"] for h in json.loads((out / "metrics.json").read_text())["best_epoch_history"]]
    assert losses[-1] < losses[0] * 0.8
    model, tok, info = load_tagger(out / "best")
    learned = model.crf.transitions()
    assert np.abs(np.asarray(learned.pair)).max() > 1e-3  # trained, not the zeros it began with

    bundle = tmp_path / "bundle"
    assert (
        main(["export", str(out / "best"), str(bundle), "--corpus", str(corpus), "--variants", "fp32"]) == 0
    )
    assert main(["bundle", "check", str(bundle)]) == 0
    manifest = read_manifest(bundle)
    assert manifest.models["ner"].transitions == learned

    # ONNX Runtime's pipeline decodes with them as the torch pipeline does, and they change its answers.
    torch_pipe = Pipeline(ner=torch_tagger(model, tok, info["max_pieces"]))
    onnx_pipe = Pipeline(ner=onnx_tagger(bundle, manifest, "ner", choose(manifest, "ner", "fp32")))
    model.crf = None
    plain = Pipeline(ner=torch_tagger(model, tok, info["max_pieces"]))
    total, differ = 0, 0
    for doc in read_corpus(corpus):
        a, b = torch_pipe.extract(doc.name, doc.text), onnx_pipe.extract(doc.name, doc.text)
        assert [e.span for e in a.entities] == [e.span for e in b.entities]
        total += len(a.entities)
        differ += [e.span for e in a.entities] != [e.span for e in plain.extract(doc.name, doc.text).entities]
    assert total > 0 and differ > 0

    # Back to torch with the transitions, and on from the bundle: a further run starts from its weights.
    again, _, _ = load_tagger(checkpoint_from_bundle(bundle, "ner", tmp_path / "imported"))
    assert again.crf.transitions() == learned
    more = tmp_path / "more"
    settings = [f"corpus={corpus}", f"init={bundle}", f"output={more}", "epochs=1", "batch_size=8"]
    settings += ["lr=1e-4", "warmup=0", "dev_fraction=0.25", "max_steps=2"]
    assert main(["train", "ner", *[a for s in settings for a in ("--set", s)]]) == 0
    continued, _, meta = load_tagger(more / "best")
    assert meta["init"] == str(bundle) and continued.crf is not None


def test_init_names_what_it_needs(
    crf_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus, out = crf_run
    base = [f"corpus={corpus}", f"output={tmp_path / 'x'}", "max_steps=1", "dev_fraction=0.25"]
    assert main(["train", "ner", *[a for s in [*base, f"init={tmp_path}"] for a in ("--set", s)]]) == 2
    assert "neither a tagger checkpoint" in capsys.readouterr().err
    # A NER checkpoint cannot start a relation model.
    assert main(["train", "re", *[a for s in [*base, f"init={out / 'best'}"] for a in ("--set", s)]]) == 2
    assert "are not a re model's" in capsys.readouterr().err


def test_a_broken_manifest_transition_is_named(crf_run: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, out = crf_run
    bundle = tmp_path / "bundle"
    assert (
        main(["export", str(out / "best"), str(bundle), "--corpus", str(corpus), "--variants", "fp32"]) == 0
    )
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["ner"]["transitions"]["end"] = [0.0]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="transitions of the entity head: transitions must score 17 labels"):
        read_manifest(bundle)


def test_a_crf_entity_model_joins_a_bundle_and_averages_with_a_plain_one(
    crf_run: tuple[Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    from training.average import average_checkpoints
    from training.scripts.replace_model import main as replace

    corpus, out = crf_run
    donor = export(out / "best", corpus, tmp_path / "donor")
    joined = tmp_path / "joined"
    assert replace([str(tiny_bundle), str(donor), "ner", "--out", str(joined)]) == 0
    manifest, before = read_manifest(joined), read_manifest(tiny_bundle)
    assert manifest.models["ner"] == read_manifest(donor).models["ner"]
    assert manifest.models["re"] == before.models["re"] and manifest.dev_metrics is None
    assert (joined / "re").is_dir() and not (joined / "ner" / "model.int8.onnx").exists()

    # A tagger without a CRF averages as one whose transitions are all 0 (plain Viterbi).
    crf, tok, meta = load_tagger(out / "best")
    plain, _, _ = load_tagger(out / "best")
    plain.crf = None
    save_tagger(plain, tok, tmp_path / "plain", {k: v for k, v in meta.items() if k != "transitions"})
    mean, _, _ = load_tagger(average_checkpoints([out / "best", tmp_path / "plain"], tmp_path / "mean"))
    np.testing.assert_allclose(
        np.asarray(mean.crf.transitions().pair), np.asarray(crf.crf.transitions().pair) / 2, rtol=1e-6
    )
    # The bundle names an average's members (the model card lists them).
    averaged = read_manifest(export(tmp_path / "mean", corpus, tmp_path / "mean-bundle")).models["ner"]
    assert [m["weight"] for m in averaged.training["averaged"]] == [1.0, 1.0]
