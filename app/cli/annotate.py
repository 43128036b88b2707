"""`renersans annotate`: brat .txt files in, .ann files out, on the service's pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import Commands


def register(sub: Commands) -> None:
    p = sub.add_parser("annotate", help="brat .txt files in, .ann files out, on the service's pipeline")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--bundle", type=Path)
    p.add_argument(
        "--given-entities",
        action="store_true",
        help="read entities from the .ann beside each .txt and add only relations (track 2)",
    )
    p.set_defaults(func=annotate)


def annotate(args: argparse.Namespace) -> int:
    from app.annotate import annotate_dir
    from app.service import Extractor
    from app.settings import Settings

    settings = Settings(bundle=args.bundle) if args.bundle else Settings()
    summary = annotate_dir(Extractor(settings), args.in_dir, args.out_dir, args.given_entities)
    print(", ".join(f"{k}: {v:,}" for k, v in sorted(summary.items())) or "no .txt files found")
    return 1 if summary["failed"] else 0
