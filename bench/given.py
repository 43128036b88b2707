"""Relations given entities (track 2, `/relations`): the bundle's decoding against the same without its copy
gate, interleaved in one run, with the encoder rows each runs.

    python -m bench.given --bundle models/default --corpus ../shared/rurebus --docs 6 --rounds 5

Given entities, the gate needs a pass of the entity model of its own (for its head) over every sentence
with two or more entities, which end to end is computed anyway; this measures whether the copies it skips
pay for that pass. Each round times both settings over the same dev documents, in alternating order;
figures are medians over rounds, and the ratio is taken within each round.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from app.manifest import read_manifest
from app.pipeline import Pipeline
from app.text.brat import read_corpus
from bench.machine import describe, median
from training.variants import pipeline_for


def rows_counted(pipe: Pipeline) -> tuple[Pipeline, list[int]]:
    """`pipe` whose taggers count the encoder rows they run (entity model and relation model together)."""
    rows: list[int] = []

    def counting(run):
        def counted(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
            rows.append(int(mask.sum()))
            return run(ids, mask)

        return counted

    ner = dataclasses.replace(pipe.ner, run=counting(pipe.ner.run))
    re = dataclasses.replace(pipe.re, run=counting(pipe.re.run))
    return dataclasses.replace(pipe, ner=ner, re=re), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/default"))
    ap.add_argument("--corpus", type=Path, default=Path("../shared/rurebus"))
    ap.add_argument("--variant", default="cpu-default")
    ap.add_argument("--docs", type=int, default=6, help="dev documents per round, the shortest first")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    manifest = read_manifest(args.bundle)
    if manifest.decoding.copy_gate <= 0:
        raise SystemExit(f"{args.bundle} has no copy gate (decoding copy_gate 0): nothing to compare")
    gold, _ = manifest.dev_split(read_corpus(args.corpus))
    docs = sorted(gold, key=lambda d: len(d.text))[: args.docs]
    gated = pipeline_for(args.bundle, manifest, args.variant)
    every = dataclasses.replace(gated, decoding=dataclasses.replace(gated.decoding, copy_gate=0.0))
    systems = {"gated": gated, "every copy": every}
    pieces: dict[str, int] = {}
    for name, pipe in systems.items():  # warm-up, and the pieces each runs
        counted, rows = rows_counted(pipe)
        for d in docs:
            counted.relations_for(d.name, d.text, d.entities)
        pieces[name] = sum(rows)
    times: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(args.rounds):
        order = list(systems) if r % 2 == 0 else list(systems)[::-1]
        for name in order:
            started = time.perf_counter()
            for d in docs:
                systems[name].relations_for(d.name, d.text, d.entities)
            times[name].append(time.perf_counter() - started)
    words = sum(len(d.text.split()) for d in docs)
    machine = describe()
    print(f"{machine['cpu']}, {machine['cores']} cores; {len(docs)} dev documents, {words} words")
    for name in systems:
        print(f"{name:11s} {words / median(times[name]):7.0f} words/s  {pieces[name]:,} encoder pieces")
    # Above 1: every copy is the faster.
    ratios = [g / e for g, e in zip(times["gated"], times["every copy"], strict=True)]
    rounds = ", ".join(f"{x:.2f}" for x in ratios)
    print(f"speed of every copy over gated: {median(ratios):.2f}x (per round {rounds})")


if __name__ == "__main__":
    main()
