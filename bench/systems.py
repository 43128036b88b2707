"""The systems compared, each on the same fine-tuned weights, behind one interface:

- `paper` (baseline a): eager PyTorch with transformers, sentence by sentence, as the paper's code runs it:
  one NER forward per sentence (its windows, usually one), then one batch of that sentence's marked
  copies, one per entity, lone entities included. Segmentation, marking and decoding are this project's
  (app/text), so only the batching differs.
- `torch` (baseline b): eager PyTorch through this project's `Pipeline` (document-wide length batching).
- `ours`: the service's `Extractor` on an ONNX bundle (int8 on the CPU, fp16 with CUDA by default), the
  same object the HTTP service runs.

Every system's encoder calls are counted (calls, seconds, padded and real pieces) for the profile.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.pipeline import Pipeline, Runner, Tagger, run_batched
from app.text.brat import Document
from app.text.encode import decode_document
from app.text.segment import segment
from app.text.subwords import context_window, mark

SYSTEMS = ("paper", "torch", "ours")
ROOT = Path(__file__).resolve().parents[1]
# Ablations of ours' encoder batches: as before the padding cap (length-sorted, up to 32 rows); wide (up to
# 128 rows, padding uncapped), which a GPU may prefer: fewer, larger calls; and mixed: int8 models' rows
# batched across the document, as before each sentence's were kept apart; 8192 pieces per
# encoder run, as before runs were bounded to 2048 for memory; every copy, the copy gate off; serial: one
# encoder batch at a time on every core's thread, as before batches ran side by side.
ABLATIONS = ("ours-uncapped", "ours-wide", "ours-mixed", "ours-8192", "ours-every-copy", "ours-serial")


@dataclass
class Meter:
    """What one model's encoder did: calls, seconds inside them, pieces run (padded) and real pieces, and
    the FLOPs of those shapes."""

    calls: int = 0
    seconds: float = 0.0
    padded: int = 0
    real: int = 0
    flops: float = 0.0
    useful_flops: float = 0.0

    def reset(self) -> None:
        self.calls, self.seconds, self.padded, self.real, self.flops, self.useful_flops = (
            0,
            0.0,
            0,
            0,
            0.0,
            0.0,
        )


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def of(cls, checkpoint: Path) -> Architecture:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        return cls(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"])

    def flops(self, rows: int, width: int) -> float:
        """Multiply-adds x 2 of one encoder pass over `rows` sequences of `width` pieces: per layer the Q, K,
        V and output projections (4 h^2 per piece), the feed-forward (2 h i) and attention (2 width h, scores
        and weighted sum). Embeddings, norms and softmax are left out (a few percent)."""
        h, i = self.hidden, self.intermediate
        per_layer = rows * width * (4 * h * h + 2 * h * i + 2 * width * h)
        return 2.0 * self.layers * per_layer


def metered(run: Runner, meter: Meter, arch: Architecture) -> Runner:
    def wrapped(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        out = run(ids, mask)
        meter.seconds += time.perf_counter() - started
        meter.calls += 1
        meter.padded += ids.size
        lengths = mask.sum(1)
        meter.real += int(lengths.sum())
        meter.flops += arch.flops(*ids.shape)
        meter.useful_flops += sum(arch.flops(1, int(n)) for n in lengths)
        return out

    return wrapped


@dataclass
class System:
    name: str
    pipeline: Pipeline
    meters: dict[str, Meter] = field(default_factory=dict)
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    per_sentence: bool = False  # baseline (a)

    def extract(self, name: str, text: str, timings: dict[str, float] | None = None) -> Document:
        if self.per_sentence:
            return paper_extract(self.pipeline, name, text, timings)
        return self.pipeline.extract(name, text, True, timings)

    def reset(self) -> None:
        for m in self.meters.values():
            m.reset()


def _meter(pipe: Pipeline, archs: dict[str, Architecture]) -> dict[str, Meter]:
    """Each model's encoder calls metered with its own architecture (a shallower relation model counts
    its own layers)."""
    meters = {}
    for name in ("ner", "re"):
        tagger: Tagger | None = getattr(pipe, name)
        if tagger is not None:
            meters[name] = Meter()
            setattr(
                pipe,
                name,
                replace(tagger, run=metered(tagger.run, meters[name], archs[name])),
            )
    return meters


def torch_pipeline(ner: Path, re: Path, device: str, bundle: Path) -> Pipeline:
    """The baselines' pipeline: eager PyTorch on the checkpoints, decoding as `bundle` (ours) does, except
    that every relation copy runs, the paper's way: a copy gate is one of ours' levers, not the baseline's."""
    from app.manifest import read_manifest
    from training.models import load_tagger, torch_tagger

    taggers = []
    for path in (ner, re):
        model, tokenizer, meta = load_tagger(path, device)
        taggers.append(
            torch_tagger(
                model, tokenizer, meta["max_pieces"], meta.get("typed_markers", False), meta.get("context", 0)
            )
        )
    decoding = replace(read_manifest(bundle).decoding, copy_gate=0.0)
    # 8192 pieces per run, as the baselines were first measured (ours runs 1024 on a CPU, for memory).
    return Pipeline(ner=taggers[0], re=taggers[1], max_tokens=8192, decoding=decoding)


def build(
    name: str, ner: Path, re: Path, bundle: Path, variant: str, device: str, batch_wait_ms: float = 0.0
) -> System:
    """One system, loaded and metered; `load_seconds`: the load (for ours with the bundle check)."""
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if name in ("ours", *ABLATIONS):
        from app.service import Extractor
        from app.settings import Settings

        runs = 1 if name == "ours-serial" else 0
        extractor = Extractor(
            Settings(
                bundle=bundle, variant=variant, device=device, batch_wait_ms=batch_wait_ms, encoder_runs=runs
            )
        )
        pipe = extractor.pipeline
        if name in ("ours-uncapped", "ours-wide"):
            pipe.max_padding = float("inf")
        if name == "ours-wide":
            pipe.batch_size = 128
        if name == "ours-mixed":  # int8 rows batched across the document, not one sentence at a time
            for tagger in (pipe.ner, pipe.re):
                if tagger is not None:
                    tagger.batch_dependent = False
        if name == "ours-8192":
            pipe.max_tokens = 8192
        if name == "ours-every-copy":
            pipe.decoding = replace(pipe.decoding, copy_gate=0.0)
        info = {
            "variants": {k: c.variant for k, c in extractor.choices.items()},
            "providers": {k: p[0] for k, p in extractor.providers.items()},
        }
    elif name in ("torch", "paper"):
        import torch

        pipe = torch_pipeline(ner, re, device, bundle)
        info = {"torch_threads": torch.get_num_threads(), "device": device, "precision": "fp32"}
        if name == "paper":
            # One batch per sentence, whatever its number of copies.
            pipe.batch_size, pipe.max_padding = 1 << 20, float("inf")
    else:
        raise ValueError(f"unknown system {name!r}; known: {SYSTEMS + ABLATIONS}")
    load = time.perf_counter() - started
    system = System(
        name,
        pipe,
        _meter(pipe, {"ner": Architecture.of(ner), "re": Architecture.of(re)}),
        load,
        info,
        per_sentence=name == "paper",
    )
    return system


def paper_extract(pipe: Pipeline, name: str, text: str, timings: dict[str, float] | None = None) -> Document:
    """Baseline (a): per sentence, NER on that sentence alone, then one batch of its marked copies."""
    assert pipe.ner is not None and pipe.re is not None
    clock = {"segmentation": 0.0, "ner": 0.0, "relations": 0.0, "decoding": 0.0}
    t = time.perf_counter()
    sentences = segment(text)
    clock["segmentation"] += time.perf_counter() - t
    spans, rels = [], []
    for s in sentences:
        t = time.perf_counter()
        found = pipe.entities(text, [s])[0]
        clock["ner"] += time.perf_counter() - t
        t = time.perf_counter()
        if len(found) == 1:
            _lone_copy(pipe.re, text, s.words, found)  # the paper runs it; it cannot hold a relation
            rels.append([])
        else:
            rels.append(pipe.relations(text, [s], [found])[0])
        clock["relations"] += time.perf_counter() - t
        spans.append(found)
    t = time.perf_counter()
    doc = decode_document(name, text, sentences, spans, rels)
    clock["decoding"] += time.perf_counter() - t
    if timings is not None:
        timings.update({k: round(v * 1000, 3) for k, v in clock.items()})
    return doc


def _lone_copy(tagger: Tagger, text: str, words: Sequence[tuple[int, int]], spans) -> None:
    budget = tagger.spec.max_pieces - tagger.pieces.special
    marked, index = mark([text[a:b] for a, b in words], spans[0], tagger.spec.typed_markers)
    lo, hi = context_window(
        tagger.pieces.lengths(marked), index[spans[0].first] - 1, index[spans[0].last] + 1, budget
    )
    run_batched(tagger, [tagger.pieces.encode(marked[lo:hi], tagger.spec.max_pieces)], "relation")


def add_system_args(ap: argparse.ArgumentParser, checkpoints: bool = True) -> None:
    """The options every benchmark shares: the bundle ours runs, the checkpoints the torch baselines run
    (the same fine-tuned weights; `resolve_checkpoints` fills them in), the corpus and the device."""
    from bench.docs import DEFAULT_CORPUS

    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--variant", default="auto", help="bundle variant for ours (auto: int8 CPU, fp16 CUDA)")
    if checkpoints:
        imported = "default: rebuilt from the bundle's ONNX file, cached under $RENERSANS_CACHE_DIR/torch"
        ap.add_argument("--ner", type=Path, help=f"NER checkpoint; {imported}")
        ap.add_argument("--re", type=Path, help=f"relation checkpoint; {imported}")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def resolve_checkpoints(args: argparse.Namespace) -> argparse.Namespace:
    """`--ner`/`--re` left out: torch checkpoints rebuilt from the bundle's ONNX files, so that the baselines
    run the bundle's own weights on a fresh clone (no training run's checkpoints there). Imported once per
    ONNX file into $RENERSANS_CACHE_DIR (else ~/.cache/renersans)/torch/<sha256>/ (training/from_onnx.py)."""
    for model in ("ner", "re"):
        if getattr(args, model, False) is None:
            from training.from_onnx import cached_checkpoint, import_variant

            variant, path = import_variant(args.bundle, model)
            print(f"{model}: the baselines' torch checkpoint comes from {path} ({variant}) ...", flush=True)
            setattr(args, model, cached_checkpoint(args.bundle, model))
            print(f"{model}: torch checkpoint in {getattr(args, model)} (cached by the file's sha256)")
    return args
