"""Torch checkpoints rebuilt from a bundle's ONNX files run the bundle's weights: the same logits as ONNX
Runtime on the batches the pipeline really makes, and a checkpoint `load_tagger` loads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from app.bundle import CPU, choose, onnx_tagger
from app.cli import main
from app.errors import BundleError
from app.manifest import read_manifest, sha256, write_manifest
from app.pipeline import Pipeline, Tagger
from app.text.brat import read_corpus
from app.text.subwords import WordPieces
from training import from_onnx
from training.from_onnx import CHECK_SENTENCES, cached_checkpoint, checkpoint_from_bundle
from training.models import load_tagger

# (max |torch - ONNX Runtime| logit, least argmax agreement) per variant. fp32 graphs: the exporter's own
# parity bound. fp16: ONNX Runtime keeps activations in half precision (11 significant bits, a relative
# 2^-11 = 5e-4 per rounding); over two layers and logits of a few units that is some 1e-3 (0.0073 on the
# 12-layer models/default), so 0.05 is loose for rounding yet below what one mis-mapped weight does (0.4 on
# the tiny model, see the last test; 0.9-2.8 on models/default). A near-tie may flip its argmax.
BOUNDS = {"fp32": (1e-4, 1.0), "optimized": (1e-4, 1.0), "fp16": (0.05, 0.99)}


@pytest.fixture(scope="module")
def batches(tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path) -> dict[str, list]:
    """The (ids, mask) batches of each model when the pipeline extracts the tiny corpus."""
    corpus = tiny_checkpoints[0]
    manifest = read_manifest(tiny_bundle)
    seen: dict[str, list] = {"ner": [], "re": []}
    taggers = {}
    for name, recorded in seen.items():
        tagger = onnx_tagger(tiny_bundle, manifest, name, choose(manifest, name, "fp32", "cpu"))

        def run(ids, mask, run=tagger.run, recorded=recorded):
            recorded.append((ids, mask))
            return run(ids, mask)

        taggers[name] = Tagger(run, tagger.pieces, tagger.spec, tagger.providers)
    pipe = Pipeline(ner=taggers["ner"], re=taggers["re"])
    for doc in read_corpus(corpus):
        pipe.extract(doc.name, doc.text)
    assert seen["ner"] and seen["re"], "the tiny models found no entity: the relation model never ran"
    return seen


@pytest.mark.parametrize("variant", ["fp32", "optimized", "fp16"])
def test_imported_model_gives_onnx_runtimes_logits(
    tiny_checkpoints: tuple[Path, Path, Path],
    tiny_bundle: Path,
    batches: dict[str, list],
    variant: str,
    tmp_path: Path,
) -> None:
    manifest = read_manifest(tiny_bundle)
    bound, least_agreement = BOUNDS[variant]
    for name, original in zip(("ner", "re"), tiny_checkpoints[1:], strict=True):
        info = manifest.models[name]
        out = checkpoint_from_bundle(tiny_bundle, name, tmp_path / name, variant)
        model, tokenizer, meta = load_tagger(out)

        # The weights are the trained checkpoint's: exactly from fp32 graphs, to fp16 rounding from fp16.
        imported, trained = (
            load_file(str(out / "model.safetensors")),
            load_file(str(original / "model.safetensors")),
        )
        assert set(imported) == set(trained)
        for key, value in trained.items():
            rounding = 0.0 if variant != "fp16" else 2**-11 * np.abs(value).max() + 1e-7
            assert np.abs(imported[key] - value).max() <= rounding, key

        onnx_file = info.variants[variant].file
        session = ort.InferenceSession(str(tiny_bundle / str(onnx_file)), providers=[CPU])
        worst, agree = 0.0, []
        for ids, mask in batches[name]:
            with torch.inference_mode():
                logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            expected = session.run(list(info.outputs.values()), {"input_ids": ids, "attention_mask": mask})
            valid = mask.astype(bool)
            for head, e in zip(info.outputs, expected, strict=True):
                got = logits[head].numpy()[valid]
                worst = max(worst, float(np.abs(got - e[valid]).max()))
                agree.append(got.argmax(-1) == e[valid].argmax(-1))
        assert worst < bound, f"{name} {variant}: logits differ by {worst}"
        assert np.concatenate(agree).mean() >= least_agreement

        # The meta the pipeline and export read, and where it came from.
        assert model.labels == dict(info.labels)
        assert (meta["max_pieces"], meta["typed_markers"]) == (info.max_pieces, info.typed_markers)
        assert tokenizer.pad_token_id == info.pad_id
        source = meta["imported_from"]
        assert (source["variant"], source["sha256"]) == (variant, info.variants[variant].sha256)
        assert source["sha256"] == sha256(tiny_bundle / str(onnx_file))
        # The tokenizer is the bundle's: the same pieces for the batches' ids, and for words with markers.
        bundled = Tokenizer.from_file(str(tiny_bundle / info.tokenizer))
        used = sorted({int(i) for ids, _ in batches[name] for i in ids.ravel()})
        assert tokenizer.convert_ids_to_tokens(used) == [bundled.id_to_token(i) for i in used]
        words = [*CHECK_SENTENCES[0], *info.marker_tokens]
        assert WordPieces(tokenizer.backend_tokenizer).encode(words) == WordPieces(bundled).encode(words)


def test_cli_writes_both_models_and_names_what_is_missing(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "torch"
    assert main(["bundle", "torch", str(tiny_bundle), str(out), "--variant", "fp16"]) == 0
    for name in ("ner", "re"):
        assert json.loads((out / name / "tagger.json").read_text())["imported_from"]["variant"] == "fp16"
    assert main(["bundle", "torch", str(tiny_bundle), str(out), "--models", "tagger"]) == 2

    # A bundle whose only file is int8 (lossy) has nothing to import, and says what would do.
    only_int8 = tmp_path / "int8-only"
    only_int8.mkdir()
    manifest = read_manifest(tiny_bundle)
    for name in manifest.models:
        for variant in ("fp32", "optimized", "fp16"):
            manifest = manifest.with_variant(name, variant, None)
    write_manifest(only_int8, manifest)
    with pytest.raises(BundleError, match="ships no fp32, optimized or fp16 ONNX file"):
        checkpoint_from_bundle(only_int8, "ner", tmp_path / "none")


def test_benchmarks_import_once_into_the_cache(tiny_bundle: Path, derived_variant_cache: Path) -> None:
    from bench.systems import resolve_checkpoints

    args = resolve_checkpoints(argparse.Namespace(bundle=tiny_bundle, ner=None, re=None))
    manifest = read_manifest(tiny_bundle)
    for name in ("ner", "re"):
        digest = manifest.models[name].variants["fp32"].sha256
        assert getattr(args, name) == derived_variant_cache / "torch" / digest
    stamp = (args.ner / "model.safetensors").stat().st_mtime_ns
    assert cached_checkpoint(tiny_bundle, "ner") == args.ner
    assert (args.ner / "model.safetensors").stat().st_mtime_ns == stamp  # not imported again
    given = resolve_checkpoints(argparse.Namespace(bundle=tiny_bundle, ner=Path("x"), re=Path("y")))
    assert (given.ner, given.re) == (Path("x"), Path("y"))


def test_a_mis_read_graph_is_refused(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import's own check, against the mistake no shape catches: a square weight left untransposed (the
    last attention output's) moves the tiny model's logits by about 0.4, past the fp16 tolerance, and
    nothing is written."""
    read = from_onnx.read_tagger

    def untransposed(*args, **kwargs):
        weights = read(*args, **kwargs)
        key = f"encoder.layer.{weights.arch.layers - 1}.attention.output.dense.weight"
        weights.encoder[key] = weights.encoder[key].T.copy()
        return weights

    monkeypatch.setattr(from_onnx, "read_tagger", untransposed)
    with pytest.raises(BundleError, match="differ from ONNX Runtime's"):
        checkpoint_from_bundle(tiny_bundle, "ner", tmp_path / "bad", "fp16")
    assert not (tmp_path / "bad").exists()
