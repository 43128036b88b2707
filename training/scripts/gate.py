"""Fit the copy gate (training/gate.py) for a bundle and write a gated copy of the bundle.

    python -m training.scripts.gate models/default ../shared/rurebus --out /tmp/b-gate \
        --recall 0.99 --json runs/gate.json

Fits one gate per L2 weight in `--l2` on the bundle's training documents, keeps the one that skips the
most dev copies at the bar keeping `--recall` of the dev relations within reach, copies the bundle to
`--out` with the gate attached to its entity model and the bar as its decoding's `copy_gate`. Then measure
it: `renersans bundle measure OUT --variants cpu-default` (dev F1 on the three tracks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from app.manifest import read_manifest, write_manifest
from app.text.brat import read_corpus
from training.gate import (
    choose_bar,
    dev_relations,
    examples,
    fit,
    hidden_tagger,
    load_examples,
    reach,
    save_examples,
    with_gate,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.scripts.gate", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("corpus", type=Path, help="the training documents (the bundle's dev split among them)")
    ap.add_argument("--out", type=Path, required=True, help="where the gated bundle is written")
    ap.add_argument("--recall", type=float, default=0.99, help="share of dev relations kept within reach")
    ap.add_argument("--l2", default="1e-6,1e-5,1e-4,1e-3", help="L2 weights tried (comma-separated)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--examples",
        type=Path,
        help="an .npz keeping the examples (hidden states) between runs: read where it exists, else written",
    )
    args = ap.parse_args(argv)
    if args.out.resolve() == args.bundle.resolve():
        ap.error("--out must be a new directory: the source bundle stays as it is until the gate is measured")
    if args.out.exists():
        ap.error(f"{args.out} exists: choose a new directory")

    manifest = read_manifest(args.bundle)
    dev_docs, train_docs = manifest.dev_split(read_corpus(args.corpus))
    if not dev_docs:
        sys.exit(f"none of the bundle's dev documents are under {args.corpus}")
    if args.examples and args.examples.exists():
        train, dev = load_examples(args.examples)
    else:
        tagger = hidden_tagger(args.bundle, manifest.models["ner"])
        train = examples(tagger, train_docs, "training entities")
        dev = examples(tagger, dev_docs, "dev entities")
        if args.examples:
            save_examples(args.examples, train, dev)
    relations = dev_relations(dev, dev_docs)
    print(
        f"{len(train.types):,} training entities in sentences of two or more ({train.related.mean():.1%} "
        f"arguments of a relation there), {len(dev.types):,} dev ones ({dev.related.mean():.1%}); "
        f"{len(relations):,} dev relations within one sentence"
    )
    fits = []
    for l2 in (float(x) for x in args.l2.split(",")):
        gate = fit(train, l2)
        bar = choose_bar(gate, dev, relations, args.recall)
        p = gate.probabilities(dev)
        row = {
            "l2": l2,
            "bar": bar,
            "dev_copies_skipped": float(np.mean(p < bar)),
            "dev_relations_within_reach": reach(gate, dev, relations, bar),
            "dev_arguments_kept": float(np.mean(p[dev.related] >= bar)),
            "dev_non_arguments_skipped": float(np.mean(p[~dev.related] < bar)),
        }
        print(
            f"l2 {l2:g}: bar {bar:.4f} skips {row['dev_copies_skipped']:.1%} of the dev copies, keeps "
            f"{row['dev_relations_within_reach']:.2%} of the dev relations within reach"
        )
        fits.append((row, gate))
    row, gate = max(fits, key=lambda f: f[0]["dev_copies_skipped"])
    shutil.copytree(args.bundle, args.out)
    gated = with_gate(manifest, args.out, gate, row["bar"])
    # The dev figures were measured without the gate: they do not hold for the gated bundle until measured.
    write_manifest(args.out, dataclasses.replace(gated, dev_metrics=None))
    print(
        f"wrote {args.out} (l2 {row['l2']:g}, copy_gate {row['bar']:.4f}); measure it with `renersans bundle "
        f"measure {args.out} --variants cpu-default`"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "bundle": str(args.bundle),
            "recall": args.recall,
            "training_entities": len(train.types),
            "dev_entities": len(dev.types),
            "dev_relations": len(relations),
            "fits": [f[0] for f in fits],
            "chosen": row,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
