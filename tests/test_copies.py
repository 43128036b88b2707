"""What the relation stage runs: the copy gate (training/gate.py), which skips the relation copies of
entities that probably have no partner, and the bound on the pieces of one encoder run. Real ONNX Runtime
sessions of the tiny bundle, a gate fitted on the tiny corpus slice."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.bundle import check_bundle, choose, onnx_tagger
from app.manifest import read_manifest, write_manifest
from app.pipeline import Pipeline, Tagger
from app.text.brat import Document, read_corpus
from training.gate import Gate, examples, fit, hidden_tagger, with_gate


@dataclasses.dataclass
class Gated:
    bundle: Path
    plain: Path
    documents: list[Document]
    gate: Gate
    bar: float


@pytest.fixture(scope="module")
def gated(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Gated:
    """The tiny bundle with a gate fitted on the tiny corpus, its bar at the median entity's probability."""
    documents = read_corpus(tiny_checkpoints[0])
    manifest = read_manifest(tiny_bundle)
    found = examples(hidden_tagger(tiny_bundle, manifest.models["ner"], "fp32"), documents)
    assert found.related.any() and not found.related.all(), "the slice has entities with and without partners"
    gate = fit(found, l2=1e-2)
    bar = float(np.median(gate.probabilities(found)))
    out = tmp_path_factory.mktemp("gated") / "bundle"
    shutil.copytree(tiny_bundle, out)
    write_manifest(out, with_gate(manifest, out, gate, bar))
    return Gated(out, tiny_bundle, documents, gate, bar)


def pipeline(bundle: Path, copy_gate: float | None = None, **options: object) -> Pipeline:
    manifest = read_manifest(bundle)
    taggers = {
        m: onnx_tagger(bundle, manifest, m, choose(manifest, m, "fp32", "cpu")) for m in manifest.models
    }
    decoding = manifest.decoding
    if copy_gate is not None:
        decoding = dataclasses.replace(decoding, copy_gate=copy_gate)
    return Pipeline(ner=taggers["ner"], re=taggers["re"], decoding=decoding, **options)


def counted(tagger: Tagger, calls: list[tuple[int, int]]) -> Tagger:
    """`tagger` recording the shape of every encoder run."""
    run: Callable = tagger.run

    def recording(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(ids.shape)
        return run(ids, mask)

    return dataclasses.replace(tagger, run=recording)


def relation_rows(pipe: Pipeline, extract: Callable[[Pipeline], Document]) -> tuple[int, Document]:
    calls: list[tuple[int, int]] = []
    doc = extract(dataclasses.replace(pipe, re=counted(pipe.re, calls)))
    return sum(rows for rows, _ in calls), doc


def test_the_gated_bundle_checks_and_its_head_is_the_fitted_gate(gated: Gated) -> None:
    assert check_bundle(gated.bundle) == []  # every shipped file loads, with 8 gate classes
    manifest = read_manifest(gated.bundle)
    assert manifest.decoding.copy_gate == pytest.approx(gated.bar)
    info = manifest.models["ner"]
    pipe = pipeline(gated.bundle)
    words = [d.text.split()[:40] for d in gated.documents]
    logits = pipe._per_word(words, ("gate",))["gate"]
    hidden = Pipeline(ner=hidden_tagger(gated.bundle, info, "fp32"))._per_word(words, ("hidden",))["hidden"]
    for h, z in zip(hidden, logits, strict=True):
        np.testing.assert_allclose(z, h @ gated.gate.weight.T + gated.gate.bias, atol=1e-3)


def test_gate_skips_copies_below_its_bar_and_nothing_else(gated: Gated) -> None:
    gated_pipe, every_copy = pipeline(gated.bundle), pipeline(gated.bundle, copy_gate=0.0)
    plain = pipeline(gated.plain)
    skipped = 0
    for d in gated.documents:
        rows, doc = relation_rows(gated_pipe, lambda p, d=d: p.extract(d.name, d.text))
        all_rows, full = relation_rows(every_copy, lambda p, d=d: p.extract(d.name, d.text))
        # The gate head leaves the entity model's answers as they were; at 0 the bundle is the plain one.
        assert full == plain.extract(d.name, d.text)
        assert doc.entities == full.entities
        spans = gated_pipe.entities(d.text)
        candidates = [s for sentence in spans if len(sentence) >= 2 for s in sentence]
        assert all(s.relates is not None for s in candidates)
        assert rows == sum(s.relates >= gated.bar for s in candidates)
        assert all_rows == len(candidates)
        skipped += all_rows - rows
    assert skipped > 0


def test_given_entities_run_every_copy(gated: Gated) -> None:
    """The gate is for entities found: given entities would need an entity-model pass for its head, which
    costs more than the copies it skips, so their relations are those of every copy."""
    gated_pipe, every_copy = pipeline(gated.bundle), pipeline(gated.bundle, copy_gate=0.0)
    ner_rows: list[tuple[int, int]] = []
    gated_pipe = dataclasses.replace(gated_pipe, ner=counted(gated_pipe.ner, ner_rows))
    for d in gated.documents:
        rows, doc = relation_rows(gated_pipe, lambda p, d=d: p.relations_for(d.name, d.text, d.entities))
        all_rows, full = relation_rows(every_copy, lambda p, d=d: p.relations_for(d.name, d.text, d.entities))
        assert rows == all_rows > 0 and doc == full
    assert ner_rows == []  # no entity-model pass at all


def test_a_bar_of_one_runs_no_copy(gated: Gated) -> None:
    d = max(gated.documents, key=lambda d: len(d.relations))
    rows, doc = relation_rows(pipeline(gated.bundle, copy_gate=1.0), lambda p: p.extract(d.name, d.text))
    assert rows == 0 and doc.relations == [] and doc.entities


def test_a_gating_decoding_needs_a_gate_head(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data["decoding"]["copy_gate"] = 0.5
    (bundle / "manifest.json").write_text(json.dumps(data))
    problems = check_bundle(bundle, load_sessions=False)
    assert len(problems) == 1 and "no gate head" in problems[0] and "copy_gate" in problems[0]


def test_no_encoder_run_exceeds_its_pieces(gated: Gated) -> None:
    calls: list[tuple[int, int]] = []
    pipe = pipeline(gated.plain, max_tokens=256)
    pipe = dataclasses.replace(pipe, ner=counted(pipe.ner, calls), re=counted(pipe.re, calls))
    bounded = [pipe.extract(d.name, d.text) for d in gated.documents]
    assert all(rows * width <= 256 or rows == 1 for rows, width in calls)
    assert max(rows for rows, _ in calls) > 1  # rows were still batched together
    # fp32 answers do not depend on the batch: the bound changes how the work is cut, not what is found.
    assert bounded == [pipeline(gated.plain).extract(d.name, d.text) for d in gated.documents]


def test_a_new_gate_replaces_the_old_one(gated: Gated, tmp_path: Path) -> None:
    bundle = tmp_path / "regated"
    shutil.copytree(gated.bundle, bundle)
    width = gated.gate.weight.shape[1]
    flat = Gate(np.zeros((8, width)), np.full(8, 2.0), 0.0)
    write_manifest(bundle, with_gate(read_manifest(bundle), bundle, flat, 0.5))
    assert check_bundle(bundle) == []
    logits = pipeline(bundle)._per_word([gated.documents[0].text.split()[:20]], ("gate",))["gate"][0]
    np.testing.assert_allclose(logits, 2.0, atol=1e-5)  # the new gate's alone: no old head stacked on it
