"""`renersans cache list|prune`: the variants derived on this host (app/derive.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import CACHE_DIR_HELP, Commands


def register(sub: Commands) -> None:
    cache = sub.add_parser(
        "cache", help="the variants derived on this host (the CPU's int8): list them, remove stale ones"
    ).add_subparsers(dest="action", required=True)
    p = cache.add_parser("list", help="each derived file, its size, and whether this installation reads it")
    p.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    p.set_defaults(func=list_cache)
    p = cache.add_parser(
        "prune",
        help="remove derived files made by another version of ONNX Runtime or of the derivation, and "
        "abandoned partial writes; with --bundle, also those not derived from the bundles named",
    )
    p.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    p.add_argument(
        "--bundle", type=Path, action="append", help="keep this bundle's derived files (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=prune)


def list_cache(args: argparse.Namespace) -> int:
    from app.derive import cache_entries, default_cache_dir

    cache = args.cache_dir or default_cache_dir()
    entries = cache_entries(cache)
    for path, state in entries:
        print(f"{path.stat().st_size / 1e6:8.1f} MB  {state:13s}  {path.name}")
    total = sum(p.stat().st_size for p, _ in entries) / 1e6
    print(f"{cache}: {len(entries)} derived files, {total:.1f} MB")
    return 0


def prune(args: argparse.Namespace) -> int:
    from app.derive import default_cache_dir, prune_cache

    cache = args.cache_dir or default_cache_dir()
    removed = prune_cache(cache, args.bundle, dry_run=args.dry_run)
    for path, size in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name} ({size / 1e6:.1f} MB)")
    freed = sum(size for _, size in removed) / 1e6
    print(f"{cache}: {len(removed)} files, {freed:.1f} MB {'to free' if args.dry_run else 'freed'}")
    return 0
