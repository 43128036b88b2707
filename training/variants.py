"""Measure a bundle's variants: size, dev F1 on all three tracks through the real ONNX Runtime pipeline, and
CPU speed as a ratio to fp32 (else the first variant) timed in the same run (interleaved rounds, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from app.bundle import CPU, Choice, choose, onnx_tagger, variant_file
from app.manifest import Manifest, read_manifest
from app.metric import evaluate
from app.pipeline import Pipeline
from app.text.brat import Document, read_corpus

CPU_DEFAULT = "cpu-default"


def variant_of(manifest: Manifest, spec: str) -> dict[str, str]:
    """Each model's variant: `spec` for all, or with "cpu-default" the one the service picks on a CPU."""
    if spec == CPU_DEFAULT:
        return {name: choose(manifest, name, device="cpu").variant for name in manifest.models}
    return dict.fromkeys(manifest.models, spec)


def pipeline_for(
    bundle: Path, manifest: Manifest, variant: str, threads: int = 0, run_pieces: int = 0
) -> Pipeline:
    """The pipeline of `variant` (as `variant_of` takes it) on the CPU, decoding as the bundle does, with
    `run_pieces` padded pieces per encoder run (0: the CPU service's bound)."""
    picked = variant_of(manifest, variant)
    taggers = {
        name: onnx_tagger(bundle, manifest, name, Choice(picked[name], [CPU], "measured"), threads)
        for name in manifest.models
    }
    pipe = Pipeline(ner=taggers["ner"], re=taggers.get("re"), decoding=manifest.decoding)
    if run_pieces:
        pipe.max_tokens = run_pieces
    return pipe


def dev_scores(pipe: Pipeline, gold: Sequence[Document], label: str) -> dict[str, float]:
    """NER, relations given gold entities, end-to-end: micro F1 (official metric) on `gold`."""
    ner, re_gold, e2e = {}, {}, {}
    for d in tqdm(gold, desc=f"dev {label}", unit="doc", leave=False):
        predicted = pipe.extract(d.name, d.text, relations=pipe.re is not None)
        ner[d.name] = e2e[d.name] = predicted
        if pipe.re is not None:
            re_gold[d.name] = pipe.relations_for(d.name, d.text, d.entities)
    scores = {"ner": evaluate(gold, ner, "ner").micro.f1}
    if pipe.re is not None:
        scores["re_gold"] = evaluate(gold, re_gold, "re").micro.f1
        scores["end_to_end"] = evaluate(gold, e2e, "re").micro.f1
    return scores


def speed(pipes: dict[str, Pipeline], docs: Sequence[Document], rounds: int = 3) -> dict[str, float]:
    """Median seconds per pass over `docs` for each variant, variants interleaved within each round so
    that load from elsewhere on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {v: [] for v in pipes}
    for pipe in pipes.values():  # warm-up
        pipe.extract("warm", docs[0].text)
    for _ in range(rounds):
        for name, pipe in pipes.items():
            started = time.perf_counter()
            for d in docs:
                pipe.extract(d.name, d.text)
            times[name].append(time.perf_counter() - started)
    return {v: statistics.median(t) for v, t in times.items()}


def measure(
    bundle: Path,
    corpus: Path,
    variants: Sequence[str] | None = None,
    speed_docs: int = 3,
    run_pieces: int = 0,
) -> dict:
    manifest = read_manifest(bundle)
    gold, _ = manifest.dev_split(read_corpus(corpus))
    if not gold:
        raise SystemExit(f"none of the bundle's dev documents are under {corpus}")
    variants = list(variants or manifest.models["ner"].variants)
    pipes = {v: pipeline_for(bundle, manifest, v, run_pieces=run_pieces) for v in variants}
    result: dict = {
        "dev_documents": len(gold),
        "max_run_pieces": next(iter(pipes.values())).max_tokens,
        "variants": {},
    }
    for v in variants:
        # A derived variant's bytes are those of its file in the cache, which the bundle does not hold.
        picked = variant_of(manifest, v)
        size = sum(variant_file(bundle, manifest, m, x).stat().st_size for m, x in picked.items())
        derived = any(manifest.models[m].variants[x].derive is not None for m, x in picked.items())
        result["variants"][v] = {
            "models": picked,
            "bytes": size,
            "derived": derived,
            "dev": dev_scores(pipes[v], gold, v),
        }
    # Speed on a few dev documents, the shortest first so the run stays bounded.
    sample = sorted(gold, key=lambda d: len(d.text))[:speed_docs]
    seconds = speed(pipes, sample)
    words = sum(len(d.text.split()) for d in sample)
    # The ratio's baseline is fp32 where the bundle has it, else the first variant measured.
    base = "fp32" if "fp32" in seconds else variants[0]
    result["speed_baseline"] = base
    for v in variants:
        result["variants"][v]["seconds"] = seconds[v]
        result["variants"][v]["words_per_s"] = words / seconds[v]
        result["variants"][v]["speed_ratio"] = seconds[base] / seconds[v]
    return result


def table(result: dict) -> str:
    rows = [
        "| variant | size (MB) | dev NER F1 | dev RE-gold F1 | dev end-to-end F1 | CPU words/s "
        f"| speed vs {result.get('speed_baseline', 'fp32')} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, r in result["variants"].items():
        d = r["dev"]
        ratio = f"{r['speed_ratio']:.2f}x" if r.get("speed_ratio") else "not measured"
        models = r.get("models", {})
        name = " + ".join(f"{m} {x}" for m, x in models.items()) if len(set(models.values())) > 1 else v
        name += " (derived)" if r.get("derived") else ""
        rows.append(
            f"| {name} | {r['bytes'] / 1e6:.1f} | {d['ner']:.4f} | {d.get('re_gold', float('nan')):.4f} | "
            f"{d.get('end_to_end', float('nan')):.4f} | {r['words_per_s']:.0f} | {ratio} |"
        )
    return "\n".join(rows)
