"""Export proves itself: ONNX equals torch, the variants load, and a broken bundle is named precisely."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from app.bundle import check_bundle, choose, onnx_tagger
from app.cli import main
from app.decoding import Decoding
from app.manifest import FORMAT_VERSION, read_manifest, write_manifest
from app.metric import relation_keys
from app.pipeline import Pipeline
from app.text.brat import read_corpus
from app.text.segment import segment
from training.models import load_tagger, torch_tagger
from training.variants import pipeline_for


def test_bundle_is_complete_and_parity_holds(tiny_bundle: Path) -> None:
    assert check_bundle(tiny_bundle) == []
    assert main(["bundle", "check", str(tiny_bundle)]) == 0
    manifest = read_manifest(tiny_bundle)
    assert set(manifest.models) == {"ner", "re"}
    for model in manifest.models.values():
        assert model.parity_max_abs_fp32 is not None and model.parity_max_abs_fp32 <= 1e-4
        assert set(model.variants) == {"fp32", "optimized", "int8", "fp16"}
        assert model.training["data_sha256"]
    assert manifest.models["re"].marker_tokens[0] == "<e:MET>"
    assert manifest.default_variant == {"cpu": "int8", "cuda": "fp16"}


def test_onnx_pipeline_decodes_as_torch_does(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path
) -> None:
    corpus, ner_dir, re_dir = tiny_checkpoints
    ner, ner_tok, ner_info = load_tagger(ner_dir)
    re, re_tok, re_info = load_tagger(re_dir)
    torch_pipe = Pipeline(
        ner=torch_tagger(ner, ner_tok, ner_info["max_pieces"]),
        re=torch_tagger(re, re_tok, re_info["max_pieces"], typed_markers=True),
    )
    manifest = read_manifest(tiny_bundle)
    onnx_pipe = Pipeline(
        ner=onnx_tagger(tiny_bundle, manifest, "ner", choose(manifest, "ner", "fp32")),
        re=onnx_tagger(tiny_bundle, manifest, "re", choose(manifest, "re", "fp32")),
    )
    total = 0
    for doc in read_corpus(corpus):
        a, b = torch_pipe.extract(doc.name, doc.text), onnx_pipe.extract(doc.name, doc.text)
        assert [e.span for e in a.entities] == [e.span for e in b.entities]
        assert relation_keys(a) == relation_keys(b)
        # Track 2: the given entities come back unchanged, in reading order.
        given = onnx_pipe.relations_for(doc.name, doc.text, doc.entities)
        assert [e.span for e in given.entities] == sorted((e.span for e in doc.entities), key=lambda s: s[1:])
        total += len(a.entities)
    assert total > 0  # the tiny model does predict entities, so the comparison compared something


def broken(bundle: Path, tmp_path: Path, damage) -> list[str]:
    copy = tmp_path / "broken"
    shutil.copytree(bundle, copy)
    damage(copy)
    return check_bundle(copy)


def edit_json(change):
    """A damage that edits manifest.json by hand, as JSON: what a typed manifest cannot hold."""

    def damage(root: Path) -> None:
        data = json.loads((root / "manifest.json").read_text())
        change(data)
        (root / "manifest.json").write_text(json.dumps(data))

    return damage


BREAKAGES = [
    ("missing ONNX file", lambda r: (r / "ner" / "model.int8.onnx").unlink(), "model.int8.onnx: ONNX file"),
    ("missing tokenizer", lambda r: (r / "re" / "tokenizer.json").unlink(), "tokenizer file missing"),
    ("no manifest", lambda r: (r / "manifest.json").unlink(), "no manifest"),
    (
        "wrong format version",
        edit_json(lambda data: data.update(format_version=FORMAT_VERSION + 1)),
        f"version {FORMAT_VERSION + 1}",
    ),
    (
        "label mismatch",
        edit_json(lambda data: data["models"]["ner"]["labels"]["entity"].reverse()),
        "labels of head 'entity'",
    ),
    (
        "corrupt ONNX",
        lambda r: (r / "ner" / "model.fp32.onnx").write_bytes(b"not a model"),
        "model.fp32.onnx: checksum differs",
    ),
]


@pytest.mark.parametrize(("name", "damage", "message"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_bundles_are_named(tiny_bundle: Path, tmp_path: Path, name: str, damage, message: str) -> None:
    problems = broken(tiny_bundle, tmp_path, damage)
    assert any(message in p for p in problems), problems


def test_corrupt_onnx_with_matching_checksum_is_caught(tiny_bundle: Path, tmp_path: Path) -> None:
    def damage(root: Path) -> None:
        (root / "re" / "model.fp16.onnx").write_bytes(b"\x08\x07garbage")
        manifest = read_manifest(root)
        unchecked = replace(manifest.models["re"].variants["fp16"], sha256="")
        write_manifest(root, manifest.with_variant("re", "fp16", unchecked))

    problems = broken(tiny_bundle, tmp_path, damage)
    assert any("model.fp16.onnx: ONNX Runtime cannot load it" in p for p in problems), problems


DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_default_bundle_checks_and_fits_the_budget() -> None:
    assert check_bundle(DEFAULT) == []
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size <= 150 * 1024 * 1024, f"models/default is {size / 2**20:.1f} MiB, over the 150 MiB budget"
    manifest = read_manifest(DEFAULT)
    assert set(manifest.models) == {"ner", "re"}
    assert manifest.dev_metrics, "the model card's dev figures belong in the manifest too"
    assert (DEFAULT / "README.md").is_file()


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_confident_entities_are_a_subset(corpus_dir: Path) -> None:
    """`min_entity_prob` drops the entities the model is least sure of, and only those."""
    manifest = read_manifest(DEFAULT)
    pipe = pipeline_for(DEFAULT, manifest, "cpu-default")
    text = read_corpus(corpus_dir / "train_part_2")[0].text[:1500]
    every = {e.span for e in pipe.extract("d", text, relations=False).entities}
    own = pipe.decoding
    # Bars inside the shipped model's range: its entity model, half a CRF's, spreads its tag probabilities
    # below 0.9 (its transitions carry part of each decision).
    pipe.decoding = replace(own, min_entity_prob=0.6)
    confident = {e.span for e in pipe.extract("d", text, relations=False).entities}
    pipe.decoding = replace(own, min_entity_prob=0.8)
    surest = {e.span for e in pipe.extract("d", text, relations=False).entities}
    assert len(every) > len(confident) > len(surest) and surest <= confident <= every
    with pytest.raises(ValueError, match=r"min_entity_prob is 1\.01"):  # a probability: at most 1
        replace(own, min_entity_prob=1.01)
    # A bias towards O works inside the decoder: fewer entities as it grows, none at an overwhelming one.
    pipe.decoding = replace(own, o_bias=2.0)
    fewer = {e.span for e in pipe.extract("d", text, relations=False).entities}
    pipe.decoding = replace(own, o_bias=1e6)
    assert 0 < len(fewer) < len(every) and pipe.extract("d", text, relations=False).entities == []


def test_sentences_longer_than_the_model_are_windowed(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path
) -> None:
    """A 'sentence' of several thousand pieces (a table flattened to one line) is tagged to its end."""
    corpus = tiny_checkpoints[0]
    words = " ".join(" ".join(d.text.split()) for d in read_corpus(corpus))
    text = words.replace(".", " ").replace("!", " ").replace("?", " ")
    manifest = read_manifest(tiny_bundle)
    pipe = Pipeline(ner=onnx_tagger(tiny_bundle, manifest, "ner", choose(manifest, "ner", "fp32")))
    sentences = segment(text)
    assert len(sentences) == 1
    lengths = pipe.ner.pieces.lengths([text[a:b] for a, b in sentences[0].words])
    assert sum(lengths) > 4 * manifest.models["ner"].max_pieces
    doc = pipe.extract("long", text, relations=False)
    assert all(text[e.start : e.end] == e.text for e in doc.entities)
    # Entities are found beyond the first window: nothing after it was cut off.
    first_window_end = sentences[0].words[manifest.models["ner"].max_pieces // 2][0]
    assert any(e.start > 2 * first_window_end for e in doc.entities)


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_lower_none_weight_only_adds_relations(corpus_dir: Path) -> None:
    """Weighting 'no relation' below 1 (the default, chosen on dev) turns some undecided pairs into
    relations and changes no decided one: on real text with its gold entities, a strict superset."""
    manifest = read_manifest(DEFAULT)
    pipe = pipeline_for(DEFAULT, manifest, "fp16")
    doc = read_corpus(corpus_dir / "train_part_2")[0]
    cut = 6000
    entities = [e for e in doc.entities if e.end <= cut]
    assert pipe.decoding.none_weight < 1
    weighted = set(relation_keys(pipe.relations_for("d", doc.text[:cut], entities)))
    pipe.decoding = replace(pipe.decoding, none_weight=1.0)
    plain = set(relation_keys(pipe.relations_for("d", doc.text[:cut], entities)))
    assert len(plain) > 5 and plain < weighted, (plain, weighted)


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_relation_scores_take_in_their_entities_and_the_bar_reads_them(corpus_dir: Path) -> None:
    """A relation's score is its pair decision's probability times its two entities' scores (given entities
    count as certain), and `min_relation_score` keeps the relations whose score reaches it, and only those."""
    manifest = read_manifest(DEFAULT)
    pipe = pipeline_for(DEFAULT, manifest, "cpu-default")
    doc = read_corpus(corpus_dir / "train_part_2")[0]
    text = doc.text[:6000]
    entities = [e for e in doc.entities if e.end <= len(text)]

    def found(**settings: float) -> tuple[dict, dict]:
        pipe.decoding = replace(manifest.decoding, **settings)
        out, given = pipe.extract("d", text), pipe.relations_for("d", text, entities)
        by_id = out.entity_by_id()
        end_to_end = {
            k: (r.score, by_id[r.arg1].score, by_id[r.arg2].score)
            for k, r in zip(relation_keys(out), out.relations, strict=True)
        }
        return end_to_end, {k: r.score for k, r in zip(relation_keys(given), given.relations, strict=True)}

    every, given = found(min_relation_score=0.0)
    assert len(every) > 5 and len(given) > 5
    assert all(0 < r <= min(a, b) for r, a, b in every.values())
    # Entity scores mapped otherwise (a score-only setting): the decisions stay, and each relation's score
    # divided by its entities' is the same pair probability; relations between given entities do not move.
    shift = manifest.decoding.entity_score_shift + 1
    shifted, given_shifted = found(min_relation_score=0.0, entity_score_shift=shift)
    assert shifted.keys() == every.keys() and given_shifted == given
    for k, (r, a, b) in every.items():
        r2, a2, b2 = shifted[k]
        assert a2 > a and b2 > b and r2 / (a2 * b2) == pytest.approx(r / (a * b), rel=1e-6)
    bar = sorted(r for r, _, _ in every.values())[len(every) // 2]
    kept, given_kept = found(min_relation_score=bar)
    assert 0 < len(kept) < len(every) and kept.keys() == {k for k, (r, _, _) in every.items() if r >= bar}
    assert given_kept.keys() == {k for k, r in given.items() if r >= bar}
    with pytest.raises(ValueError, match=r"min_relation_score is 2"):
        replace(manifest.decoding, min_relation_score=2)


def test_bundle_carries_its_decoding_to_every_pipeline(tiny_bundle: Path, tmp_path: Path) -> None:
    """The manifest's `decoding` is what the service, `bundle measure` and the benchmarks decode with, and
    `renersans bundle decoding --set` changes it, refusing a bad value with the bundle unchanged."""
    from app.errors import BundleError
    from app.service import Extractor
    from app.settings import Settings

    assert read_manifest(tiny_bundle).decoding == Decoding()  # export records the defaults
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    changed = ["--set", "bio=argmax", "--set", "none_weight=0.05", "--set", "join_negations=false"]
    assert main(["bundle", "decoding", str(bundle), *changed]) == 0
    manifest = read_manifest(bundle)
    expected = Decoding(bio="argmax", none_weight=0.05, join_negations=False)
    assert manifest.decoding == expected
    extractor = Extractor(Settings(bundle=bundle, variant="fp32"))
    assert extractor.pipeline.decoding == expected
    assert extractor.info()["decoding"] == expected.settings()
    assert pipeline_for(bundle, manifest, "fp32").decoding == expected

    before = (bundle / "manifest.json").read_text()
    assert main(["bundle", "decoding", str(bundle), "--set", "bio=beam"]) == 2
    assert main(["bundle", "decoding", str(bundle), "--set", "none_weight=-1"]) == 2
    assert main(["bundle", "decoding", str(bundle), "--set", "no_such=1"]) == 2
    assert (bundle / "manifest.json").read_text() == before

    data = json.loads((bundle / "manifest.json").read_text())
    data["decoding"]["pairs"] = "both"  # edited by hand
    (bundle / "manifest.json").write_text(json.dumps(data))
    problems = check_bundle(bundle, load_sessions=False)
    assert len(problems) == 1 and "decoding pairs is 'both'" in problems[0], problems
    with pytest.raises(BundleError, match="decoding pairs"):
        Extractor(Settings(bundle=bundle, variant="fp32"))


def test_measure_records_its_figures_with_the_bundle_decoding(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    """`bundle measure --record` measures with the bundle's decoding and records that decoding beside the
    figures, in the manifest and on the model card."""
    corpus = tiny_checkpoints[0]
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["bundle", "decoding", str(bundle), "--set", "none_weight=0.5"]) == 0
    args = ["bundle", "measure", str(bundle), "--corpus", str(corpus), "--variants", "fp32", "--record"]
    assert main(args) == 0
    manifest = read_manifest(bundle)
    assert manifest.decoding.none_weight == 0.5
    assert manifest.dev_metrics is not None and manifest.dev_metrics.decoding == manifest.decoding
    assert manifest.dev_metrics.documents > 0 and "ner" in manifest.dev_metrics.by_variant["fp32"]
    card = (bundle / "README.md").read_text()
    assert "(weight of 'no relation' 0.5)" in card
    # Notes written under the generated card survive the figures being recorded again.
    (bundle / "README.md").write_text(card + "\n## Why this model\n\nChosen by hand.\n")
    assert main(["bundle", "decoding", str(bundle), "--set", "none_weight=0.6"]) == 0
    assert main(args) == 0
    card = (bundle / "README.md").read_text()
    assert "(weight of 'no relation' 0.6)" in card
    assert card.endswith("\n## Why this model\n\nChosen by hand.\n") and card.count("## Why") == 1
