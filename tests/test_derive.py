"""Derived variants: the CPU's int8 made on the serving host from the shipped fp16 file (app/derive.py)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime.transformers.float16 import convert_np_to_float16

from app.bundle import check_bundle, choose, variant_file
from app.cli import main
from app.derive import (
    OUTLIERS,
    activation_maxima,
    cache_entries,
    quantization_exclusions,
    second_projection,
    smooth,
    smoothing_targets,
    split_outliers,
    widen_to_fp32,
)
from app.errors import BundleError
from app.manifest import MANIFEST, Derivation, Manifest, read_manifest, write_manifest
from app.metric import evaluate, relation_keys
from app.service import Extractor
from app.settings import Settings
from app.text.brat import read_corpus
from training.calibrate import calibrate
from training.variants import pipeline_for

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


def fp16_only(bundle: Path, out: Path, cache: Path) -> Path:
    """`bundle` as a shipped default is: the fp16 files alone, int8 declared derived (by the CLI)."""
    shutil.copytree(
        bundle,
        out,
        ignore=shutil.ignore_patterns("model.fp32.onnx", "model.optimized.onnx", "model.int8.onnx"),
    )
    manifest = read_manifest(out)
    for name, model in manifest.models.items():
        for variant in sorted(set(model.variants) - {"fp16"}):
            manifest = manifest.with_variant(name, variant, None)
    write_manifest(out, manifest)
    assert main(["bundle", "derive", str(out), "--declare", "int8", "--cache-dir", str(cache)]) == 0
    return out


def derivation(manifest: Manifest, model: str) -> Derivation:
    """How `model`'s int8 is derived."""
    spec = manifest.models[model].variants["int8"].derive
    assert spec is not None, f"{model}'s int8 is shipped, not derived"
    return spec


def with_derivation(manifest: Manifest, model: str, spec: Derivation) -> Manifest:
    int8 = manifest.models[model].variants["int8"]
    return manifest.with_variant(model, "int8", replace(int8, derive=spec))


def sample_batch(bundle: Path, corpus: Path) -> dict[str, np.ndarray]:
    pipe = pipeline_for(bundle, read_manifest(bundle), "fp16")
    texts = [d.text[:400] for d in read_corpus(corpus)]
    rows = [pipe.ner.pieces.encode(t.split()).ids[:200] for t in texts]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), 1, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def logits(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_widening_gives_back_the_fp32_graph_with_fp16_rounded_weights(tiny_bundle: Path) -> None:
    fp32 = onnx.load(str(tiny_bundle / "ner" / "model.optimized.onnx"))
    wide = widen_to_fp32(onnx.load(str(tiny_bundle / "ner" / "model.fp16.onnx")))
    graph = wide.graph
    assert not [t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert not [v.name for v in (*graph.value_info, *graph.output) if v.type.tensor_type.elem_type == 10]
    assert not [n.name for n in graph.node for a in n.attribute if n.op_type == "Cast" and a.i == 10]
    original = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer if t.data_type == 1}
    compared = 0
    for t in graph.initializer:
        if t.name in original:
            # Rounded as the exporter's converter rounds (ONNX Runtime's float16.py): like numpy's cast, but
            # a tiny nonzero weight becomes the smallest fp16 subnormal instead of 0.
            expected = convert_np_to_float16(original[t.name]).astype(np.float32)
            np.testing.assert_array_equal(numpy_helper.to_array(t), expected, err_msg=t.name)
            compared += 1
    assert compared >= len(original) * 0.9, (compared, len(original))


def test_derived_int8_serves_as_the_exported_one(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    corpus = tiny_checkpoints[0]
    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    manifest = read_manifest(bundle)
    assert check_bundle(bundle) == []
    assert manifest.default_variant["cpu"] == "int8"
    assert choose(manifest, "ner", device="cpu").variant == "int8"
    derived = variant_file(bundle, manifest, "ner", "int8", cache)
    assert derived.parent == cache and not list(bundle.rglob("*int8*"))
    # The same quantization of the same graph: only the fp16 rounding of the weights differs.
    feed = sample_batch(bundle, corpus)
    valid = feed["attention_mask"].astype(bool)
    ours, exported = (
        logits(derived, feed)[valid],
        logits(tiny_bundle / "ner" / "model.int8.onnx", feed)[valid],
    )
    assert np.abs(ours - exported).max() < 0.05 * np.abs(exported).max()
    assert (ours.argmax(-1) == exported.argmax(-1)).mean() > 0.98
    # And the pipeline on it decodes the tiny corpus as the exported int8 does, to within a few entities.
    gold = read_corpus(corpus)
    runs = {}
    for name, root in (("derived", bundle), ("exported", tiny_bundle)):
        pipe = pipeline_for(root, read_manifest(root), "int8")
        runs[name] = {d.name: pipe.extract(d.name, d.text) for d in gold}
    agreement = evaluate(list(runs["exported"].values()), runs["derived"], "ner").micro.f1
    assert agreement > 0.95


def test_smoothing_moves_channel_ranges_into_the_weights_without_changing_outputs(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path
) -> None:
    feed = sample_batch(tiny_bundle, tiny_checkpoints[0])
    model = onnx.load(str(tiny_bundle / "re" / "model.optimized.onnx"))
    targets = smoothing_targets(model.graph)
    assert {n.op_type for n in targets} == {"Attention", "MatMul"}, (
        "attention is fused in the optimized graph"
    )
    maxima = activation_maxima(model, [(feed["input_ids"], feed["attention_mask"])])
    assert set(maxima) == {n.input[0] for n in targets}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(maxima[n.input[0]].shape == weights[n.input[1]].shape[:1] for n in targets)
    assert all(np.isfinite(m).all() and (m >= 0).all() and m.max() > 0 for m in maxima.values())
    expected = logits(tiny_bundle / "re" / "model.optimized.onnx", feed)
    reads = {n.name: n.input[0] for n in targets}  # before smoothing rewires them
    smoothed = smooth(model, maxima)
    muls = [n for n in smoothed.graph.node if n.name.endswith("/smooth")]
    assert len(muls) == len(targets)
    session = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feed)[0]
    valid = feed["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-3 * np.abs(expected).max())
    # The smoothed inputs' ranges are flatter across channels: that is what int8's one scale needs.
    after = activation_maxima(smoothed, [(feed["input_ids"], feed["attention_mask"])])
    spread = [
        (np.ptp(np.log(maxima[reads[name]] + 1e-6)), np.ptp(np.log(after[f"{name}/smooth/output"] + 1e-6)))
        for name in reads
    ]
    assert sum(b < a for a, b in spread) >= 0.9 * len(spread), spread


def test_calibrated_bundle_derives_a_smoothed_int8_of_every_product(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    corpus = tiny_checkpoints[0]
    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    dynamic = variant_file(bundle, read_manifest(bundle), "ner", "int8", cache)
    written = calibrate(bundle, corpus, documents=2, seed=1)
    manifest = read_manifest(bundle)
    assert check_bundle(bundle) == []
    for model in ("ner", "re"):
        spec = derivation(manifest, model)
        assert spec.method == "int8-smooth" and spec.calibration == f"{model}/calibration.npz"
        assert written[model] == bundle / spec.calibration
        names = spec.calibrated_on["names"]
        assert len(names) == 2 and not set(names) & manifest.dev_documents
    assert manifest.default_variant["cpu"] == "int8", "calibrating leaves the CPU default alone"
    smoothed = variant_file(bundle, manifest, "ner", "int8", cache)
    assert smoothed != dynamic, "a calibrated derivation is a new cache key"
    graph = onnx.load(str(smoothed)).graph
    # Every encoder product is int8 now, the feed-forward projections included; only the heads stay fp32.
    assert [n.name for n in graph.node if n.op_type == "MatMul"] == quantization_exclusions(graph, True)
    assert len(quantization_exclusions(onnx.load(str(dynamic)).graph)) > len(
        quantization_exclusions(graph, True)
    )
    feed = sample_batch(bundle, corpus)
    valid = feed["attention_mask"].astype(bool)
    ours, fp32 = logits(smoothed, feed)[valid], logits(tiny_bundle / "ner" / "model.fp32.onnx", feed)[valid]
    assert (ours.argmax(-1) == fp32.argmax(-1)).mean() > 0.95
    # Other maxima are another derivation, never the stale file.
    np.savez(written["ner"], **{k: v * 2 for k, v in np.load(written["ner"]).items()})
    unchecked = replace(derivation(manifest, "ner"), calibration_sha256=None)
    manifest = with_derivation(manifest, "ner", unchecked)
    assert variant_file(bundle, manifest, "ner", "int8", cache) != smoothed


def test_smoothing_the_feed_forward_projections_alone(
    tiny_checkpoints: tuple[Path, Path, Path],
    tiny_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = tiny_checkpoints[0]
    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    args = ["bundle", "calibrate", str(bundle), "--corpus", str(corpus), "--documents", "2"]
    assert main([*args, "--method", "int8-smooth-ffn", "--models", "re"]) == 0
    assert "re: activation maxima" in capsys.readouterr().out
    manifest = read_manifest(bundle)
    assert check_bundle(bundle) == []
    assert derivation(manifest, "re").method == "int8-smooth-ffn"
    assert derivation(manifest, "ner").method == "int8-dynamic"
    assert not (bundle / "ner" / "calibration.npz").exists(), "only the models named are calibrated"
    graph = onnx.load(str(variant_file(bundle, manifest, "re", "int8", cache))).graph
    # Smoothed before exactly the second feed-forward projections, and then every encoder product is int8.
    smoothed = sorted(n.name.removesuffix("/smooth") for n in graph.node if n.name.endswith("/smooth"))
    layers = {m.group() for n in graph.node if (m := re.search(r"/layer\.\d+/", n.name))}
    assert len(smoothed) == len(layers) > 0
    assert all(name.endswith("/output/dense/MatMul") and "/attention/" not in name for name in smoothed)
    assert [n.name for n in graph.node if n.op_type == "MatMul"] == quantization_exclusions(graph, True)
    feed = sample_batch(bundle, corpus)
    valid = feed["attention_mask"].astype(bool)
    int8 = variant_file(bundle, manifest, "re", "int8", cache)
    ours, fp32 = logits(int8, feed)[valid], logits(tiny_bundle / "re" / "model.fp32.onnx", feed)[valid]
    assert (ours.argmax(-1) == fp32.argmax(-1)).mean() > 0.95
    with pytest.raises(SystemExit):  # a method that reads no maxima
        main([*args, "--method", "int8-dynamic"])


def test_outlier_channels_are_split_off_exactly_and_kept_in_fp32(
    tiny_checkpoints: tuple[Path, Path, Path],
    tiny_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = tiny_checkpoints[0]
    feed = sample_batch(tiny_bundle, corpus)
    valid = feed["attention_mask"].astype(bool)
    optimized = tiny_bundle / "ner" / "model.optimized.onnx"
    model = onnx.load(str(optimized))
    maxima = activation_maxima(model, [(feed["input_ids"], feed["attention_mask"])])
    projections = {n.name: n.input[0] for n in model.graph.node if second_projection(n)}
    split = split_outliers(model, maxima, count=2)
    # In fp32 the split product is the same product.
    session = ort.InferenceSession(split.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = logits(optimized, feed)
    np.testing.assert_allclose(session.run(None, feed)[0][valid], expected[valid], atol=1e-4)
    # One fp32 product per projection, over its two widest channels, which the rest no longer reads.
    weights = {t.name: numpy_helper.to_array(t) for t in split.graph.initializer}
    outliers = {n.name.removesuffix(OUTLIERS): n for n in split.graph.node if n.name.endswith(OUTLIERS)}
    assert sorted(outliers) == sorted(projections) and projections
    for name, read in projections.items():
        widest = np.argsort(-maxima[read])[:2]
        assert sorted(weights[f"{name}/top"]) == sorted(widest)
        assert weights[outliers[name].input[1]].shape[0] == 2
        keep = weights[f"{name}/keep"]
        assert (keep[widest] == 0).all() and keep.sum() == len(keep) - 2

    # Through the CLI: the entity model's int8 then quantizes every encoder product but the outliers'.
    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    args = ["bundle", "calibrate", str(bundle), "--corpus", str(corpus), "--documents", "2"]
    assert main([*args, "--method", "int8-ffn-outliers", "--models", "ner"]) == 0
    assert "int8 now derives by int8-ffn-outliers" in capsys.readouterr().out
    manifest = read_manifest(bundle)
    assert check_bundle(bundle) == []
    spec = derivation(manifest, "ner")
    assert spec.method == "int8-ffn-outliers" and spec.alpha is None, "no smoothing strength to record"
    int8 = variant_file(bundle, manifest, "ner", "int8", cache)
    assert not re.search(r"-a[\d.]+$", int8.name.split("-int8-")[0]), "no smoothing strength in the key"
    assert (int8, "current") in cache_entries(cache), "`renersans cache` knows the file"
    graph = onnx.load(str(int8)).graph
    fp32 = [n.name for n in graph.node if n.op_type == "MatMul"]
    assert fp32 == quantization_exclusions(graph, True)
    assert sorted(n for n in fp32 if n.endswith(OUTLIERS)) == sorted(f"{p}{OUTLIERS}" for p in projections)
    assert not any(second_projection(n) for n in graph.node if n.op_type == "MatMul"), "the rest is int8"
    ours, reference = logits(int8, feed)[valid], logits(tiny_bundle / "ner" / "model.fp32.onnx", feed)[valid]
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() > 0.95


def test_calibration_file_is_checked(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", tmp_path / "cache")
    calibrate(bundle, tiny_checkpoints[0], documents=1)
    path = bundle / "re" / "calibration.npz"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert any("re/calibration.npz: checksum differs" in p for p in check_bundle(bundle)), check_bundle(
        bundle
    )
    path.unlink()
    assert any("needs the calibration file" in p for p in check_bundle(bundle)), check_bundle(bundle)
    with pytest.raises(BundleError, match="renersans bundle calibrate"):
        variant_file(bundle, read_manifest(bundle), "re", "int8", tmp_path / "cache")


def test_derived_variant_is_cached_and_reused(tiny_bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    manifest = read_manifest(bundle)
    first = variant_file(bundle, manifest, "re", "int8", cache)
    stamp = first.stat().st_mtime_ns
    assert variant_file(bundle, manifest, "re", "int8", cache) == first
    assert first.stat().st_mtime_ns == stamp, "derived again instead of taken from the cache"
    assert not list(cache.glob("*.part")), "a temporary file was left behind"
    # Another source file (a retrained model) is another key, never the stale file.
    retrained = replace(manifest.models["re"].variants["fp16"], sha256="0" * 64)
    assert variant_file(bundle, manifest.with_variant("re", "fp16", retrained), "re", "int8", cache) != first


def test_prune_removes_only_what_this_installation_will_not_read(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files of another ONNX Runtime or derivation version and abandoned partial writes go; the current
    files stay, unless `--bundle` names the bundles to keep and they are not theirs; other files stay."""
    import os
    import time

    cache = tmp_path / "cache"
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", cache)
    manifest = read_manifest(bundle)
    current = {variant_file(bundle, manifest, m, "int8", cache) for m in ("ner", "re")}
    other_ort = cache / next(iter(current)).name.replace(f"-ort{ort.__version__}", "-ort1.2.0")
    other_derivation = cache / next(iter(current)).name.replace("-v1-", "-v0-")
    foreign = cache / ("re.int8." + "f" * 16 + "-int8-dynamic-v1-ort" + ort.__version__ + ".onnx")
    old_partial, young_partial, unrelated = cache / "tmpabc.part", cache / "tmpdef.part", cache / "notes.txt"
    for path in (other_ort, other_derivation, foreign, old_partial, young_partial, unrelated):
        path.write_bytes(b"x" * 1000)
    os.utime(old_partial, (time.time() - 7200, time.time() - 7200))

    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    listed = capsys.readouterr().out
    assert other_ort.name in listed and "other version" in listed and "notes.txt" not in listed
    assert main(["cache", "prune", "--cache-dir", str(cache), "--dry-run"]) == 0
    assert other_ort.exists() and "would remove" in capsys.readouterr().out

    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    left = set(cache.iterdir())
    assert left == current | {foreign, young_partial, unrelated}, left
    assert main(["cache", "prune", "--cache-dir", str(cache), "--bundle", str(bundle)]) == 0
    assert set(cache.iterdir()) == current | {young_partial, unrelated}
    # What is kept is what the service reads: loading the bundle derives nothing again.
    stamps = {p: p.stat().st_mtime_ns for p in current}
    assert {variant_file(bundle, manifest, m, "int8", cache) for m in ("ner", "re")} == current
    assert {p: p.stat().st_mtime_ns for p in current} == stamps


def test_unwritable_cache_says_what_to_set(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", tmp_path / "cache")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BundleError, match="RENERSANS_CACHE_DIR"):
        variant_file(bundle, read_manifest(bundle), "ner", "int8", blocker / "cache")


# ONNX Runtime's CPU build warns when asked for CUDA; its CUDA build without a GPU logs and falls back alike.
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider")
def test_after_a_cuda_fallback_the_cpu_variants_serve(
    tiny_checkpoints: tuple[Path, Path, Path],
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The GPU image on a host whose GPU does not start: onnxruntime offers CUDA, the sessions end up on
    the CPU, and the service then runs the CPU's variants (here the derived int8), not CUDA's fp16."""
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", tmp_path / "cache")
    manifest = read_manifest(bundle)
    cpu_only = Extractor(Settings(_env_file=None, bundle=bundle, device="cpu", cache_dir=tmp_path / "cache"))
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    assert [choose(manifest, m, device="cuda").variant for m in ("ner", "re")] == ["fp16", "fp16"]

    def served(**settings: object) -> Extractor:
        return Extractor(Settings(_env_file=None, bundle=bundle, device="cuda", **settings))

    fallen_back = served(cache_dir=tmp_path / "cache")
    assert "CUDA provider could not start" in caplog.text
    assert fallen_back.info()["providers"] == {"ner": "CPUExecutionProvider", "re": "CPUExecutionProvider"}
    assert fallen_back.info()["variants"] == {"ner": "int8", "re": "int8"} == cpu_only.info()["variants"]
    assert fallen_back.choices["re"].reason == "default cpu variant: CUDA did not start"
    text = read_corpus(tiny_checkpoints[0])[0].text[:600]
    assert fallen_back.extract(text).document == cpu_only.extract(text).document
    # A variant the operator configured is kept; so is CUDA's where the CPU's cannot be made (no cache).
    assert served(variant="fp16").info()["variants"] == {"ner": "fp16", "re": "fp16"}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    kept = served(cache_dir=blocker / "cache")
    assert kept.info()["variants"] == {"ner": "fp16", "re": "fp16"}
    assert "keeping fp16 on the CPU, its int8 cannot be loaded" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m.with_variant("ner", "fp16", None),
            "derives from 'fp16', which the bundle does not ship",
        ),
        (
            lambda m: with_derivation(m, "ner", replace(derivation(m, "ner"), method="int4-magic")),
            "unknown derivation 'int4-magic'",
        ),
    ],
    ids=["source missing", "unknown method"],
)
def test_broken_derivations_are_named(tiny_bundle: Path, tmp_path: Path, change, message: str) -> None:
    bundle = fp16_only(tiny_bundle, tmp_path / "shipped", tmp_path / "cache")
    write_manifest(bundle, change(read_manifest(bundle)))
    problems = check_bundle(bundle)
    assert any(message in p for p in problems), problems


@pytest.mark.skipif(not (DEFAULT / MANIFEST).exists(), reason="models/default has not been exported yet")
def test_default_bundle_derives_int8_relations_for_the_cpu(corpus_dir: Path) -> None:
    """On a CPU the shipped bundle runs both models as int8 made from fp16; given real documents'
    entities, the two relation models mostly agree and find as many true relations (dev F1 on all 56 dev
    documents: training/RESULTS.md)."""
    manifest = read_manifest(DEFAULT)
    assert choose(manifest, "ner", device="cpu").variant == "int8"
    assert choose(manifest, "re", device="cpu").variant == "int8"
    # The entity model's keeps each second feed-forward projection's outlier channel in fp32 (smoothing
    # that projection instead lost 0.006 end to end).
    assert derivation(manifest, "ner").method == "int8-ffn-outliers"
    # So does its relation model's, from the maxima the bundle ships (smoothing there was as fast and 0.0017
    # below it given gold entities).
    assert derivation(manifest, "re").method == "int8-ffn-outliers"
    assert check_bundle(DEFAULT, load_sessions=False) == []
    # Four documents' openings: on one alone (about 30 relations) agreement moves by 0.1 either way.
    cut = 6000
    found: dict[str, set] = {"fp16": set(), "cpu-default": set()}
    gold = set()
    for i, doc in enumerate(read_corpus(corpus_dir / "train_part_3")[:4]):
        entities = [e for e in doc.entities if e.end <= cut]
        gold |= {(i, k) for k in relation_keys(doc) if max(k[1][2], k[2][2]) <= cut}
        for name in found:
            pipe = pipeline_for(DEFAULT, manifest, name)
            found[name] |= {(i, k) for k in relation_keys(pipe.relations_for("d", doc.text[:cut], entities))}
    assert len(found["fp16"]) > 80
    assert len(found["fp16"] & found["cpu-default"]) >= 0.85 * len(found["fp16"]), found
    assert len(found["cpu-default"] & gold) >= 0.9 * len(found["fp16"] & gold) > 0


def test_cpu_default_can_be_one_model_s(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "shipped"
    fp16_only(tiny_bundle, bundle, tmp_path / "cache")
    manifest = read_manifest(bundle)
    write_manifest(bundle, replace(manifest, default_variant={**manifest.default_variant, "cpu": "fp16"}))
    args = ["bundle", "derive", str(bundle), "--declare", "int8", "--cpu-default-for", "re"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    manifest = read_manifest(bundle)
    assert manifest.default_variant["cpu"] == {"ner": "fp16", "re": "int8"}
    assert [choose(manifest, m, device="cpu").variant for m in ("ner", "re")] == ["fp16", "int8"]
    assert choose(manifest, "ner", "int8", device="cpu").variant == "int8"  # still there to force
    assert main(["bundle", "derive", str(bundle), "--declare", "int8", "--cpu-default-for", "rel"]) != 0
    assert "no model ['rel'] in the bundle" in capsys.readouterr().err


@pytest.mark.skipif(not (DEFAULT / MANIFEST).exists(), reason="models/default has not been exported yet")
def test_int8_sentences_answer_alike_in_any_document(corpus_dir: Path) -> None:
    """Dynamic int8 scales a batch by its range, so a row's logits depend on its batch mates. The pipeline
    batches each sentence's rows apart for such a model: a sentence's entities and relations are then the
    same alone as inside its document, bit for bit, where batching across the document changes them."""
    from app.pipeline import run_batched
    from app.text.segment import segment
    from app.text.subwords import mark

    pipe = pipeline_for(DEFAULT, read_manifest(DEFAULT), "cpu-default")
    assert pipe.re is not None and pipe.re.batch_dependent and pipe.ner.batch_dependent
    text = "\n".join(d.text[:1500] for d in read_corpus(corpus_dir / "train_part_1")[:4])
    sentences = segment(text)
    spans = pipe.entities(text, sentences)
    assert spans == [pipe.entities(text, [s])[0] for s in sentences] and sum(map(len, spans)) > 50
    together = pipe.relations(text, sentences, spans)
    alone = [pipe.relations(text, [s], [e])[0] for s, e in zip(sentences, spans, strict=True)]
    assert together == alone and sum(map(len, together)) > 10
    # Entities batched across the document, as the relation copies below: some sentences change.
    pipe.ner.batch_dependent = False
    assert pipe.entities(text, sentences) != spans
    pipe.ner.batch_dependent = True

    # The same rows batched across the document, as before: their logits move.
    rows, owners = [], []
    for si, (s, found) in enumerate(zip(sentences, spans, strict=True)):
        for span in found if len(found) > 1 else []:
            marked, _ = mark([text[a:b] for a, b in s.words], span, pipe.re.spec.typed_markers)
            rows.append(pipe.re.pieces.encode(marked, pipe.re.spec.max_pieces))
            owners.append(si)
    apart = run_batched(pipe.re, rows, "relation", sentences=owners)
    pipe.re.batch_dependent = False
    mixed = run_batched(pipe.re, rows, "relation", sentences=owners)
    assert any(not np.array_equal(a, b) for a, b in zip(apart, mixed, strict=True))


def test_cpu_sessions_keep_no_memory_pattern_per_shape(tiny_bundle: Path) -> None:
    """ONNX Runtime's memory patterns are kept per input shape; a CPU session does without them (they held
    48 MB more in the soak for no speed)."""
    from app.bundle import CPU, make_session

    session = make_session(tiny_bundle / "ner" / "model.fp32.onnx", [CPU])
    assert session.get_session_options().enable_mem_pattern is False
    assert session.get_session_options().enable_cpu_mem_arena is True
