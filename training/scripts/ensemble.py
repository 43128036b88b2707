"""Entity models' logits averaged: dev NER of each checkpoint alone and of their mean, through the service's
pipeline and decoding (issue 23's "ensembles, then one model").

    python -m training.scripts.ensemble runs/a/best runs/b/best runs/c/best --corpus ../shared/rurebus

The mean's emissions are the mean of the models' logits and its CRF transitions the mean of theirs (a model
without a CRF counts as one whose transitions are 0), so the Viterbi path maximises the models' mean
sequence score. The dev split is training's: `split_documents` with `--split-seed` and `--dev-fraction`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.pipeline import Pipeline, Tagger
from app.text.brat import read_corpus
from app.text.tags import Transitions
from training.data import split_documents
from training.evaluate import evaluate_ner
from training.models import load_tagger, torch_tagger


def mean_tagger(taggers: Sequence[Tagger]) -> Tagger:
    """One tagger whose outputs are the mean of `taggers`' logits, with their mean transitions."""
    first = taggers[0]
    size = len(first.spec.labels["entity"])

    def run(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        outs = [t.run(ids, mask) for t in taggers]
        return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}

    zero = Transitions((0.0,) * size, ((0.0,) * size,) * size, (0.0,) * size)
    parts = [t.spec.transitions or zero for t in taggers]
    mean = Transitions(
        tuple(np.mean([p.start for p in parts], axis=0).tolist()),
        tuple(map(tuple, np.mean([p.pair for p in parts], axis=0).tolist())),
        tuple(np.mean([p.end for p in parts], axis=0).tolist()),
    )
    crf = any(t.spec.transitions is not None for t in taggers)
    return Tagger(run, first.pieces, replace(first.spec, transitions=mean if crf else None))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="entity-model checkpoints (training's layout)")
    ap.add_argument("--corpus", type=Path, default=Path("../shared/rurebus"))
    ap.add_argument("--split-seed", type=int, default=13)
    ap.add_argument("--dev-fraction", type=float, default=0.3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    docs = read_corpus(args.corpus)
    _, dev_names = split_documents([d.name for d in docs], args.dev_fraction, args.split_seed)
    dev = [d for d in docs if d.name in set(dev_names)]
    taggers = []
    for path in args.checkpoints:
        model, tokenizer, info = load_tagger(path)
        taggers.append(torch_tagger(model, tokenizer, info["max_pieces"], context=info.get("context", 0)))
    results = {}
    for path, tagger in zip(args.checkpoints, taggers, strict=True):
        results[str(path)] = _scores(Pipeline(ner=tagger), dev)
        print(f"{path}: {results[str(path)]}", flush=True)
    if len(taggers) > 1:
        results["mean of the logits"] = _scores(Pipeline(ner=mean_tagger(taggers)), dev)
        print(f"mean of the logits: {results['mean of the logits']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _scores(pipe: Pipeline, dev) -> dict[str, float]:
    micro = evaluate_ner(pipe, dev).micro
    return {"p": round(micro.precision, 4), "r": round(micro.recall, 4), "f1": round(micro.f1, 4)}


if __name__ == "__main__":
    raise SystemExit(main())
