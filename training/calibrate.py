"""Calibrate a bundle's int8 derivation: activation maxima recorded on training documents, shipped beside the
fp16 files, from which the serving host smooths each model, or splits off its outlier channels, before
quantizing it (`int8-smooth`, `int8-smooth-ffn`, `int8-ffn-outliers`, app/derive.py).

The batches are the pipeline's own: sentences for the entity model, one marked copy per gold entity for the
relation model (track 2's path), batched as the service batches them. Only documents outside the bundle's
dev split are read, so dev F1 measured afterwards stays a measurement.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.bundle import CPU, Choice, onnx_tagger
from app.derive import (
    CALIBRATED,
    CALIBRATION_FILE,
    SMOOTH_ALPHA,
    SMOOTHED,
    ActivationProbe,
    declare,
    widen_to_fp32,
)
from app.errors import BundleError, InputError
from app.manifest import Derivation, Manifest, read_manifest, sha256, write_manifest
from app.pipeline import Pipeline
from app.text.brat import Document, read_corpus

SOURCE = "fp16"


def calibration_documents(manifest: Manifest, corpus: Path, count: int, seed: int) -> list[Document]:
    """`count` training documents outside the bundle's dev split, drawn with `seed`."""
    _, training = manifest.dev_split(read_corpus(corpus))
    docs = sorted(training, key=lambda d: d.name)
    if not docs:
        raise BundleError(f"no documents outside the bundle's dev split under {corpus}")
    return random.Random(seed).sample(docs, min(count, len(docs)))


def _recorded(bundle: Path, manifest: Manifest, model: str, feed: Callable[[Pipeline], None]) -> dict:
    """Activation maxima of `model` (its fp16 file widened to fp32) over the batches `feed` makes it run:
    the probe is the tagger's runner, so each batch runs once."""
    import onnx

    info = manifest.models[model]
    source = info.variants.get(SOURCE)
    if source is None or source.file is None:
        raise BundleError(f"model {model!r} ships no {SOURCE} file to calibrate")
    tagger = onnx_tagger(bundle, manifest, model, Choice(SOURCE, [CPU], "calibration"))
    probe = ActivationProbe(widen_to_fp32(onnx.load(str(bundle / source.file))))

    def run(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        out = probe(ids, mask)
        return {head: out[name] for head, name in info.outputs.items()}

    recording = dataclasses.replace(tagger, run=run)
    feed(Pipeline(ner=recording) if model == "ner" else Pipeline(re=recording))
    return probe.maxima


def calibrate(
    bundle: Path,
    corpus: Path,
    documents: int = 16,
    seed: int = 13,
    method: str = "int8-smooth",
    models: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Record the maxima of `models` (default: all) into `<model>/calibration.npz` and declare their `int8`
    derived by `method` (`int8-smooth`, `int8-smooth-ffn` or `int8-ffn-outliers`) from them; the CPU
    default is left as it was. Returns the files written."""
    if method not in CALIBRATED:
        raise InputError(f"calibration is for the derivations {list(CALIBRATED)}, not {method!r}")
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    unknown = sorted(set(models or ()) - set(manifest.models))
    if unknown:
        raise InputError(f"{bundle}: no model {unknown}; it has {list(manifest.models)}")
    docs = calibration_documents(manifest, corpus, documents, seed)
    feeds: dict[str, Callable[[Pipeline], None]] = {
        "ner": lambda pipe: [pipe.entities(d.text) for d in tqdm(docs, desc="calibrate ner", unit="doc")],
        "re": lambda pipe: [
            pipe.relations_for(d.name, d.text, d.entities)
            for d in tqdm(docs, desc="calibrate re", unit="doc")
        ],
    }
    manifest = declare(manifest, "int8", [])  # every model may be forced to int8; the CPU default stays
    written = {}
    for model in models or list(manifest.models):
        maxima = _recorded(bundle, manifest, model, feeds[model])
        path = bundle / model / CALIBRATION_FILE
        # fp16 keeps the maxima to 3 significant digits, which moves the smoothing factors by under 0.1 %.
        np.savez_compressed(path, **{k: v.astype(np.float16) for k, v in maxima.items()})
        derivation = Derivation(
            source=SOURCE,
            method=method,
            alpha=SMOOTH_ALPHA if method in SMOOTHED else None,
            calibration=f"{model}/{CALIBRATION_FILE}",
            calibration_sha256=sha256(path),
            calibrated_on={"documents": len(docs), "seed": seed, "names": [d.name for d in docs]},
        )
        int8 = manifest.models[model].variants["int8"]
        manifest = manifest.with_variant(model, "int8", dataclasses.replace(int8, derive=derivation))
        written[model] = path
    write_manifest(bundle, manifest)
    return written
