"""Checkpoints to an ONNX model bundle: export, prove parity with torch, build the variants, write the
manifest, tokenizer and model card.

Variants: `fp32` (as exported), `optimized` (ONNX Runtime's transformer fusions), `int8` (dynamic
quantization of the optimized graph, for CPUs; `app/derive.py`) and `fp16` (the optimized graph in half
precision, for GPUs). `derived=("int8",)` ships no int8 file but declares it derived from fp16 on the host,
which keeps a bundle with both a CPU and a GPU variant within one copy's size.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.bundle import CPU, CUDA, check_bundle
from app.derive import declare, quantize_int8
from app.errors import BundleError
from app.manifest import INPUTS, Manifest, ModelInfo, Variant, sha256, write_manifest
from app.text.subwords import WordPieces, marker_tokens
from training.models import SequenceTagger, load_tagger

PARITY_TOLERANCE = 1e-4
VARIANTS = ("fp32", "optimized", "int8", "fp16")


FALLBACK_SENTENCES = [
    "Рост валового регионального продукта в 2019 году составил 3,5 % .".split(),
    "Основной целью программы является повышение качества жизни населения Республики Коми .".split(),
    "Снижение уровня безработицы обеспечено за счёт создания новых рабочих мест .".split(),
    "Объём инвестиций в основной капитал уменьшился на 12 млрд рублей .".split(),
]


def parity_sentences(checkpoint: Path, corpus: Path, limit: int = 24) -> list[list[str]]:
    """Words of real sentences for the parity check: the checkpoint's dev documents when the corpus is
    there, otherwise a few fixed report sentences."""
    from app.text.brat import read_document
    from app.text.segment import segment

    meta = json.loads((Path(checkpoint) / "tagger.json").read_text())
    sentences: list[list[str]] = []
    for name in meta.get("dev_documents", []):
        path = Path(corpus) / f"{name}.txt"
        if not path.is_file():
            break
        doc = read_document(path)
        for s in segment(doc.text):
            if 5 <= len(s.words) <= 60:
                sentences.append([doc.text[a:b] for a, b in s.words])
        if len(sentences) >= limit:
            return sentences[:limit]
    return sentences or FALLBACK_SENTENCES


class _Exportable(nn.Module):
    """The tagger with its heads as a tuple, in a fixed order, for the exporter."""

    def __init__(self, model: SequenceTagger) -> None:
        super().__init__()
        self.model = model
        self.heads = list(model.labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask)
        return tuple(out[h] for h in self.heads)


@dataclass
class ExportedModel:
    name: str
    info: ModelInfo
    parity_max_abs: float


def _sample_batch(
    pieces: WordPieces, sentences: Sequence[Sequence[str]], pad_id: int
) -> tuple[np.ndarray, ...]:
    encoded = [pieces.encode(words).ids for words in sentences]
    width = max(len(e) for e in encoded)
    ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = e
        mask[row, : len(e)] = 1
    return ids, mask


def export_model(
    checkpoint: Path,
    out_dir: Path,
    name: str,
    sample: Sequence[Sequence[str]],
    variants: Sequence[str] = VARIANTS,
) -> ExportedModel:
    """Export one checkpoint into `out_dir/name/`; raise BundleError when ONNX and torch disagree."""
    import onnx
    import onnxruntime as ort

    model, tokenizer, meta = load_tagger(checkpoint)
    model.float().eval()
    # transformers' SDPA path decides about masks in Python at trace time, which the TorchScript exporter
    # freezes into the graph (logits off by ~1 on padded batches); the eager attention traces faithfully.
    model.encoder.set_attn_implementation("eager")
    model.encoder.config._attn_implementation = "eager"
    target = Path(out_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    pieces = WordPieces(tokenizer.backend_tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _sample_batch(pieces, sample, pad_id)
    wrapper = _Exportable(model).eval()
    outputs = [f"{h}_logits" for h in wrapper.heads]
    fp32 = target / "model.fp32.onnx"
    dynamic = {n: {0: "batch", 1: "pieces"} for n in [*INPUTS, *outputs]}
    # Tracing warns about every Python-level shape decision it freezes; the parity check below is what
    # proves the graph, so the warnings are silenced rather than escalated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(wrapper, ids, mask, fp32, outputs, dynamic)
    onnx.checker.check_model(str(fp32))

    # Parity on the export batch and on a smaller one of another shape (the axes must really be dynamic).
    session = ort.InferenceSession(str(fp32), providers=[CPU])
    parity = 0.0
    for batch in ((ids, mask), _sample_batch(pieces, sample[: max(1, len(sample) // 2)], pad_id)):
        with torch.inference_mode():
            expected = wrapper(*(torch.from_numpy(x) for x in batch))
        got = session.run(outputs, dict(zip(INPUTS, batch, strict=True)))
        valid = batch[1].astype(bool)
        for g, e in zip(got, expected, strict=True):
            parity = max(parity, float(np.abs(g[valid] - e.numpy()[valid]).max()))
    if parity > PARITY_TOLERANCE:
        raise BundleError(f"{fp32}: ONNX logits differ from torch by {parity:.2e} (> {PARITY_TOLERANCE})")

    config = model.encoder.config
    files = {"fp32": fp32}
    if {"optimized", "int8", "fp16"} & set(variants):
        files.update(
            _optimized_variants(fp32, target, config.num_attention_heads, config.hidden_size, variants)
        )
    tokenizer.backend_tokenizer.save(str(target / "tokenizer.json"))
    info = ModelInfo(
        tokenizer=f"{name}/tokenizer.json",
        labels={h: tuple(v) for h, v in model.labels.items()},
        max_pieces=meta["max_pieces"],
        context=meta.get("context", 0),
        typed_markers=meta.get("typed_markers", False),
        marker_tokens=tuple(marker_tokens(meta.get("typed_markers", False))) if meta["task"] == "re" else (),
        pad_id=pad_id,
        inputs=tuple(INPUTS),
        outputs=dict(zip(wrapper.heads, outputs, strict=True)),
        variants={
            v: Variant(
                file=f"{name}/{path.name}",
                precision={"fp32": "fp32", "optimized": "fp32", "int8": "int8 weights", "fp16": "fp16"}[v],
                providers=(CPU,) if v == "int8" else (CUDA, CPU),
                bytes=path.stat().st_size,
                sha256=sha256(path),
            )
            for v, path in files.items()
            if v in variants
        },
        encoder=meta.get("encoder"),
        training={
            **{k: meta.get(k) for k in ("config", "seed", "data_sha256", "versions", "hardware")},
            **{k: meta[k] for k in ("init", "averaged") if k in meta},  # where the weights began
        },
        dev_documents=tuple(meta.get("dev_documents", ())),
        parity_max_abs_fp32=parity,
        transitions=model.crf.transitions() if model.crf is not None else None,
    )
    for v, path in files.items():
        if v not in variants:
            path.unlink()
    return ExportedModel(name, info, parity)


def _export(
    wrapper: nn.Module, ids: np.ndarray, mask: np.ndarray, path: Path, outputs: list[str], dynamic
) -> None:
    torch.onnx.export(
        wrapper,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        str(path),
        input_names=list(INPUTS),
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def _optimized_variants(
    fp32: Path, target: Path, heads: int, hidden: int, variants: Sequence[str]
) -> dict[str, Path]:
    from onnxruntime.transformers.optimizer import optimize_model

    files = {}
    optimized = optimize_model(str(fp32), model_type="bert", num_heads=heads, hidden_size=hidden)
    opt_path = target / "model.optimized.onnx"
    optimized.save_model_to_file(str(opt_path))
    files["optimized"] = opt_path
    if "int8" in variants:
        int8 = target / "model.int8.onnx"
        quantize_int8(opt_path, int8)
        files["int8"] = int8
    if "fp16" in variants:
        optimized.convert_float_to_float16(keep_io_types=True)
        fp16 = target / "model.fp16.onnx"
        optimized.save_model_to_file(str(fp16))
        files["fp16"] = fp16
    return files


def write_bundle(out_dir: Path, manifest: Manifest, card: str = "") -> Path:
    """Write `manifest.json`, dated now, (and the model card) for the models exported into `out_dir`, then
    check the bundle. The service decodes with the manifest's decoding: a new bundle's is this version's
    defaults, which `renersans bundle decoding` changes (then measure again: the figures hold for it)."""
    out_dir = Path(out_dir)
    manifest = dataclasses.replace(manifest, created=datetime.now(UTC).isoformat(timespec="seconds"))
    write_manifest(out_dir, manifest)
    if card:
        (out_dir / "README.md").write_text(card)
    problems = check_bundle(out_dir)
    if problems:
        raise BundleError("the written bundle does not check:\n" + "\n".join(problems))
    return out_dir


def export_bundle(
    ner: Path,
    re: Path | None,
    out_dir: Path,
    sample: Sequence[Sequence[str]],
    variants: Sequence[str] = VARIANTS,
    default_variant: dict[str, str] | None = None,
    derived: Sequence[str] = (),
) -> tuple[Path, dict[str, float]]:
    """Export the NER (and relation) checkpoints into one bundle; returns it and the export seconds.

    `derived` variants are declared in the manifest, made on the serving host (app/derive.py)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    models = [export_model(ner, out_dir, "ner", sample, variants)]
    if re is not None:
        models.append(export_model(re, out_dir, "re", sample, variants))
    default = default_variant or {
        "cpu": "int8" if "int8" in variants else variants[0],
        "cuda": "fp16" if "fp16" in variants else variants[0],
    }
    manifest = Manifest(models={m.name: m.info for m in models}, default_variant=default)
    for variant in derived:
        manifest = declare(manifest, variant)
    write_bundle(out_dir, manifest)
    return out_dir, {"export_seconds": time.perf_counter() - started}
