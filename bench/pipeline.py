"""Whole-pipeline throughput, per stage, against the baselines, interleaved in one run.

    python -m bench.pipeline --bundle /tmp/bench-bundle --variant int8 [--device cuda] [--docs 2 --rounds 4]

For each round every system processes the same documents, the order of systems rotating between rounds so
that load from elsewhere falls on all alike; figures are medians over rounds and ratios are taken within
each round. Also: agreement between the systems' outputs, encoder FLOPs per word and the achieved fraction
of the peak FLOP/s measured by large matmuls in the same run, and each system's ceiling: its words/s were
every encoder FLOP at that peak and nothing else timed. Writes bench/results/pipeline-<device>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from app.schemas import EntityOut, ExtractResponse, ModelInfo, RelationOut
from app.text.brat import Document
from bench.docs import corpus_texts, pages, typical, words
from bench.machine import describe, median, peak_flops, write_result
from bench.systems import ABLATIONS, SYSTEMS, System, add_system_args, build, resolve_checkpoints

STAGES = ("segmentation", "ner", "relations", "decoding", "serialisation")
INFO = ModelInfo(bundle="bench", variants={}, providers={}, relations=True, size_bytes=0)


def serialise(doc: Document) -> bytes:
    """The /extract response body, built as the service builds it."""
    return (
        ExtractResponse(
            entities=[
                EntityOut(id=e.id, type=e.type, start=e.start, end=e.end, text=e.text) for e in doc.entities
            ],
            relations=[RelationOut(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2) for r in doc.relations],
            model=INFO,
            timings_ms={},
        )
        .model_dump_json()
        .encode()
    )


def run_docs(system: System, docs: list[Document]) -> tuple[float, dict[str, float], list[Document]]:
    """Seconds for all `docs` (extraction and serialisation), milliseconds per stage, the outputs."""
    stages = dict.fromkeys(STAGES, 0.0)
    outputs = []
    system.reset()
    started = time.perf_counter()
    for d in docs:
        timings: dict[str, float] = {}
        doc = system.extract(d.name, d.text, timings)
        t = time.perf_counter()
        serialise(doc)
        timings["serialisation"] = (time.perf_counter() - t) * 1000
        for k, v in timings.items():
            stages[k] += v
        outputs.append(doc)
    return time.perf_counter() - started, stages, outputs


def _keys(doc: Document) -> tuple[set, set]:
    spans = {e.id: (e.type, e.start, e.end) for e in doc.entities}
    return set(spans.values()), {(r.type, spans[r.arg1], spans[r.arg2]) for r in doc.relations}


def agreement(a: list[Document], b: list[Document]) -> dict[str, float]:
    """F1 of one system's entities and relations against another's (1.0: identical output)."""
    out = {}
    for i, kind in enumerate(("entities", "relations")):
        both = na = nb = 0
        for x, y in zip(a, b, strict=True):
            kx, ky = _keys(x)[i], _keys(y)[i]
            both, na, nb = both + len(kx & ky), na + len(kx), nb + len(ky)
        out[kind] = 2 * both / (na + nb) if na + nb else 1.0
        out[f"{kind}_counts"] = [na, nb]
    return out


def peak_for(system: System, model: str, peaks: dict[str, float]) -> float:
    """The measured peak a model's matmuls could reach at best: int8 products at the int8 matmul's peak, fp16
    ones at fp16's where it was measured (CUDA; a CPU computes them in fp32), the rest at the fastest fp32."""
    variant = system.info.get("variants", {}).get(model, system.info.get("precision", "fp32"))
    if "int8" in variant and "onnxruntime_int8" in peaks:
        return peaks["onnxruntime_int8"]
    if "16" in variant and "torch_float16" in peaks:
        return peaks["torch_float16"]
    return max(v for k, v in peaks.items() if "int8" not in k and "16" not in k)


def ceiling(system: System, meters: dict[str, Any], peaks: dict[str, float], n_words: int) -> float:
    """Words/s if every encoder FLOP the system did ran at its precision's measured peak and nothing else
    took time: an upper bound for any implementation doing the same FLOPs on this machine."""
    seconds = sum(m["flops"] / peak_for(system, model, peaks) for model, m in meters.items())
    return n_words / seconds if seconds else float("inf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(ap)
    ap.add_argument("--docs", type=int, default=2, help="typical corpus documents per round")
    ap.add_argument("--pages", type=int, default=0, help="instead of --docs: this many pages of corpus text")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {SYSTEMS + ABLATIONS}")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--before",
        type=Path,
        help="another bundle, run as ours runs it (system ours-before): a new bundle's cost against "
        "today's, interleaved in one run",
    )
    args = resolve_checkpoints(ap.parse_args(argv))

    machine = describe()
    peaks = peak_flops(args.device)
    corpus = corpus_texts(args.corpus)
    docs = [Document(f"pages-{args.pages}", pages(corpus, args.pages), [], [])] if args.pages else []
    docs = docs or typical(corpus, args.docs)
    n_words = sum(words(d.text) for d in docs)
    names = args.systems.split(",")
    systems = {n: build(n, args.ner, args.re, args.bundle, args.variant, args.device) for n in names}
    if args.before:
        names.append("ours-before")
        systems["ours-before"] = build("ours", args.ner, args.re, args.before, args.variant, args.device)
        systems["ours-before"].name = "ours-before"
    print(
        f"{len(docs)} documents, {n_words} words; systems loaded: "
        + ", ".join(f"{n} {s.load_seconds:.1f} s" for n, s in systems.items())
    )
    for s in systems.values():  # warm-up: first calls allocate and (on CUDA) pick kernels
        s.extract("warm", docs[0].text[:2000])

    seconds: dict[str, list[float]] = {n: [] for n in names}
    stages: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    meters: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[Document]] = {}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            took, st, out = run_docs(systems[n], docs)
            seconds[n].append(took)
            stages[n].append(st)
            outputs.setdefault(n, out)
            meters[n] = {k: vars(m).copy() for k, m in systems[n].meters.items()}
            print(f"round {r + 1}/{args.rounds} {n:6s} {took:7.2f} s  {n_words / took:7.1f} words/s")
    peaks_after = peak_flops(args.device)
    peaks = {k: max(v, peaks_after.get(k, 0.0)) for k, v in peaks.items()}

    result: dict[str, Any] = {
        "machine": machine,
        "device": args.device,
        "documents": len(docs),
        "words": n_words,
        "characters": sum(len(d.text) for d in docs),
        "rounds": args.rounds,
        "peak_flops": peaks,
        "systems": {},
        "ratios": {},
        "agreement": {},
    }
    fp32_peak = max(v for k, v in peaks.items() if "int8" not in k and "16" not in k)
    for n in names:
        s = systems[n]
        sec = median(seconds[n])
        m = meters[n]
        flops = sum(x["flops"] for x in m.values())
        encoder_s = sum(x["seconds"] for x in m.values())
        entry = {
            "info": s.info,
            "load_seconds": s.load_seconds,
            "seconds_per_round": seconds[n],
            "median_seconds": sec,
            "words_per_s": n_words / sec,
            "documents_per_s": len(docs) / sec,
            "stages_ms": {k: median([st[k] for st in stages[n]]) for k in STAGES},
            "encoder": m,
            "encoder_seconds_last_round": encoder_s,
            "padding_fraction": {k: 1 - x["real"] / x["padded"] for k, x in m.items() if x["padded"]},
            "flops_per_word": flops / n_words,
            "useful_flops_per_word": sum(x["useful_flops"] for x in m.values()) / n_words,
            "achieved_flops": flops / sec,
            "achieved_flops_in_encoder": flops / encoder_s if encoder_s else None,
            "fraction_of_fp32_peak": flops / sec / fp32_peak,
            "ceiling_words_per_s": ceiling(s, m, peaks, n_words),
        }
        if "onnxruntime_int8" in peaks:
            entry["fraction_of_int8_peak"] = flops / sec / peaks["onnxruntime_int8"]
        if "torch_float16" in peaks:
            entry["fraction_of_fp16_peak"] = flops / sec / peaks["torch_float16"]
        result["systems"][n] = entry
    if "ours" in names:
        for n in names:
            if n != "ours":
                per_round = [a / b for a, b in zip(seconds[n], seconds["ours"], strict=True)]
                result["ratios"][f"ours_vs_{n}"] = {"median": median(per_round), "per_round": per_round}
                # The most any implementation of ours' FLOPs could gain over this baseline here.
                best = result["systems"]["ours"]["ceiling_words_per_s"]
                result["ratios"][f"ceiling_vs_{n}"] = {"median": best / result["systems"][n]["words_per_s"]}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            result["agreement"][f"{a}_vs_{b}"] = agreement(outputs[a], outputs[b])

    print(
        f"\n{'system':8s} {'words/s':>9s} {'docs/s':>7s} "
        + " ".join(f"{k[:8]:>9s}" for k in STAGES)
        + f" {'GFLOP/w':>8s} {'peak%':>6s} {'ceiling':>8s}"
    )
    for n, e in result["systems"].items():
        print(
            f"{n:8s} {e['words_per_s']:9.1f} {e['documents_per_s']:7.3f} "
            + " ".join(f"{e['stages_ms'][k]:9.0f}" for k in STAGES)
            + f" {e['flops_per_word'] / 1e9:8.3f} {100 * e['fraction_of_fp32_peak']:6.1f}"
            + f" {e['ceiling_words_per_s']:8.0f}"
        )
    for k, v in result["ratios"].items():
        rounds = f" (per round {', '.join(f'{x:.2f}' for x in v['per_round'])})" if "per_round" in v else ""
        print(f"{k}: {v['median']:.2f}x{rounds}")
    for k, v in result["agreement"].items():
        print(f"agreement {k}: entities {v['entities']:.4f}, relations {v['relations']:.4f}")
    write_result(args.out or f"pipeline-{args.device}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
