"""`renersans corpus stats|roundtrip` and `renersans evaluate`: a brat corpus and the shared task's metric."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli.options import Commands


def register(sub: Commands) -> None:
    corpus = sub.add_parser("corpus", help="inspect a brat corpus")
    actions = corpus.add_subparsers(dest="action", required=True)
    p = actions.add_parser("stats", help="documents, sentences, words, entities and relations per type")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=stats)
    p = actions.add_parser("roundtrip", help="gold -> our segmentation and tags -> brat again")
    p.add_argument("gold_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=roundtrip)

    p = sub.add_parser("evaluate", help="the RuREBus metric: gold .ann against predicted .ann")
    p.add_argument("gold_dir", type=Path)
    p.add_argument("pred_dir", type=Path)
    p.add_argument("--task", choices=["ner", "re", "all"], default="all")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(func=evaluate)


def stats(args: argparse.Namespace) -> int:
    from app.corpus import corpus_stats
    from app.text.brat import read_corpus

    print(corpus_stats(read_corpus(args.dir)).render())
    return 0


def roundtrip(args: argparse.Namespace) -> int:
    from app.corpus import roundtrip_corpus

    stats = roundtrip_corpus(args.gold_dir, args.out_dir)
    print(stats.render())
    print(f"written to {args.out_dir}; score with: renersans evaluate {args.gold_dir} {args.out_dir}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from app.metric import evaluate
    from app.text.brat import parse_ann, read_corpus, read_text

    gold = read_corpus(args.gold_dir)
    pred = {}
    for g in gold:
        path = Path(args.pred_dir) / f"{g.name}.ann"
        if path.exists():
            pred[g.name] = parse_ann(read_text(path), g.text, source=str(path))
    tasks = ["ner", "re"] if args.task == "all" else [args.task]
    reports = [evaluate(gold, pred, task) for task in tasks]
    for report in reports:
        print(report.table())
        if report.missing_predictions:
            n = len(report.missing_predictions)
            print(f"\n{n} gold documents have no prediction (counted as missed)")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    return 0
