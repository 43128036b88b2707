"""Decoding choices measured on the dev split with one model pass: every encoder row is computed once and
cached, so each decoding (BIO argmax vs Viterbi; relation pairs read from either copy vs one decision per
pair; a bar on entity probability; a bias towards `O` and a weight of 'no relation'; a bar on relation
scores, which take in their entities') is scored on the same logits.

    python -m training.scripts.decoding_ablation models/default ../shared/rurebus --json runs/decoding.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.corpus import relation_signatures
from app.decoding import Decoding
from app.manifest import read_manifest
from app.metric import Counts, evaluate
from app.pipeline import Pipeline, Runner
from app.text.brat import Document, read_corpus
from training.variants import pipeline_for


def cached(run: Runner) -> Runner:
    """`run` with every row's logits kept by its piece ids, so a row seen in any earlier batch, however it
    was batched and padded, is not computed again."""
    memory: dict[bytes, dict[str, np.ndarray]] = {}

    def runner(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        lengths = mask.sum(1)
        keys = [ids[r, : lengths[r]].tobytes() for r in range(len(ids))]
        todo = [r for r, k in enumerate(keys) if k not in memory]
        if todo:
            width = int(lengths[todo].max())
            out = run(ids[todo, :width], mask[todo, :width])
            for row, r in enumerate(todo):
                memory[keys[r]] = {h: v[row, : lengths[r]] for h, v in out.items()}
        heads = memory[keys[0]].keys()
        result = {}
        for h in heads:
            block = np.zeros((len(ids), ids.shape[1], memory[keys[0]][h].shape[-1]), dtype=np.float32)
            for r, k in enumerate(keys):
                block[r, : lengths[r]] = memory[k][h]
            result[h] = block
        return result

    return runner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--variant", default="fp16")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--entity-probs",
        default="",
        help="comma-separated minimum entity probabilities to try with viterbi/pair (e.g. 0.5,0.6,0.7)",
    )
    parser.add_argument(
        "--o-biases", default="", help="comma-separated O log-probability biases to try with viterbi/pair"
    )
    parser.add_argument(
        "--none-weights",
        default="",
        help="comma-separated weights of 'no relation' to try with each bias, or with each relation bar "
        "where --relation-bars is given",
    )
    parser.add_argument(
        "--signature-counts",
        default="",
        help="comma-separated minimum training counts of a relation's (Arg1 type, relation, Arg2 type) for "
        "a pair to take it (0: no constraint), tried with the default decoding",
    )
    parser.add_argument(
        "--relation-bars",
        default="",
        help="comma-separated bars on relation scores (`min_relation_score`), tried with the bundle's own "
        "decoding; the best is also chosen on half the documents and scored on the other",
    )
    parser.add_argument("--skip-standard", action="store_true", help="only the biases, bars and counts above")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    gold, training = manifest.dev_split(read_corpus(args.corpus))
    # Signatures are counted on the training documents only, as an export would.
    seen = relation_signatures(training)
    base = pipeline_for(args.bundle, manifest, args.variant)
    base.ner.run = cached(base.ner.run)
    base.re.run = cached(base.re.run)
    rows = []
    floats = lambda text: [float(t) for t in text.split(",") if t]  # noqa: E731
    decodings = [] if args.skip_standard else itertools.product(("argmax", "viterbi"), ("either", "pair"))
    # The standard rows and the bars keep 'no relation' at weight 1, as they were first measured.
    settings = [(bio, pairs, 0.0, 0.0, 1.0, 0, None) for bio, pairs in decodings]
    settings += [("viterbi", "pair", t, 0.0, 1.0, 0, None) for t in floats(args.entity_probs)]
    grid = itertools.product(floats(args.o_biases) or [0.0], floats(args.none_weights) or [1.0])
    # Weights given with relation bars are tried with the bars instead (below).
    if args.o_biases or (args.none_weights and not args.relation_bars):
        settings += [("viterbi", "pair", 0.0, b, w, 0, None) for b, w in grid]
    # The signature rows use the bundle's own decoding (`base`), as the service would.
    own = base.decoding
    settings += [
        (own.bio, own.pairs, 0.0, own.o_bias, own.none_weight, int(c), None)
        for c in floats(args.signature_counts)
    ]
    # The relation bars, too: the scores they read are mapped as the bundle maps them. With weights of 'no
    # relation' given as well, every bar is tried at each weight (both decide how many relations are kept).
    bars = floats(args.relation_bars)
    weights = (floats(args.none_weights) if bars else []) or [own.none_weight]
    settings += [(own.bio, own.pairs, 0.0, own.o_bias, w, 0, b) for w in weights for b in bars]
    by_bar: dict[tuple[float, float], dict[str, Document]] = {}
    for bio, pairs, min_prob, o_bias, none_weight, min_count, bar in settings:
        if bar is None:
            decoding = Decoding(
                bio=bio,
                pairs=pairs,
                min_entity_prob=min_prob,
                o_bias=o_bias,
                none_weight=none_weight,
                join_negations=own.join_negations,
            )
        else:
            decoding = dataclasses.replace(own, min_relation_score=bar, none_weight=none_weight)
        pipe = Pipeline(
            ner=base.ner,
            re=base.re,
            decoding=decoding,
            signatures=frozenset(k for k, n in seen.items() if n >= min_count) if min_count else frozenset(),
        )
        started = time.perf_counter()
        predicted = {d.name: pipe.extract(d.name, d.text) for d in gold}
        given = {d.name: pipe.relations_for(d.name, d.text, d.entities) for d in gold}
        if bar is not None:
            by_bar[(none_weight, bar)] = predicted
        ner = evaluate(gold, predicted, "ner").micro
        re_gold = evaluate(gold, given, "re").micro
        e2e = evaluate(gold, predicted, "re").micro
        row = {
            "bio": bio,
            "pairs": pairs,
            "min_entity_prob": min_prob,
            "o_bias": o_bias,
            "none_weight": none_weight,
            "signature_min_count": min_count,
            "min_relation_score": bar or 0.0,
            **{
                f"{k}_{m}": getattr(v, m)
                for k, v in (("ner", ner), ("re_gold", re_gold), ("e2e", e2e))
                for m in ("precision", "recall", "f1")
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(
            f"{bio:8s} {pairs:7s} >={min_prob:.2f} O{o_bias:+.2f} none*{none_weight:.2f} sig>={min_count} "
            f"rel>={bar or 0.0:.2f} "
            f"NER {ner.precision:.4f}/{ner.recall:.4f}/{ner.f1:.4f}  "
            f"RE-gold {re_gold.precision:.4f}/{re_gold.recall:.4f}/{re_gold.f1:.4f}  "
            f"e2e {e2e.precision:.4f}/{e2e.recall:.4f}/{e2e.f1:.4f}  ({row['seconds']} s)",
            flush=True,
        )
    result = {"dev_documents": len(gold), "variant": args.variant, "rows": rows}
    if by_bar:
        result["relation_bar_two_fold"] = two_fold(gold, by_bar)
        print(f"bar chosen on half the documents, scored on the other: {result['relation_bar_two_fold']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def two_fold(
    gold: Sequence[Document], by_bar: dict[tuple[float, float], dict[str, Document]]
) -> dict[str, object]:
    """End-to-end F1 of the relation bar (and weight of 'no relation') chosen on the even dev documents and
    scored on the odd, and the other way round, summed: what choosing them on dev is worth on documents they
    were not chosen on."""
    halves = (list(gold[::2]), list(gold[1::2]))
    counts = Counts()
    chosen = []
    for pick, score in (halves, halves[::-1]):
        bar = max(by_bar, key=lambda b: evaluate(pick, by_bar[b], "re").micro.f1)
        chosen.append(bar)
        counts += evaluate(score, by_bar[bar], "re").micro
    return {"bars": chosen, "precision": counts.precision, "recall": counts.recall, "f1": counts.f1}


if __name__ == "__main__":
    main()
