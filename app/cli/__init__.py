"""`renersans`: the command line. Serving-side commands import no torch; training-side commands are
imported only when called, so a serving install (no torch) runs everything it has."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import annotate, bundle, cache, corpus, serve, train
from app.errors import RenersansError

# Each module adds its command group, in the order `renersans --help` lists them.
GROUPS = (corpus, train, bundle, cache, serve, annotate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renersans", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RenersansError, FileNotFoundError) as exc:
        print(f"renersans: error: {exc}", file=sys.stderr)
        return 2
