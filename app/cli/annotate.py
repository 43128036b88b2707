"""`renersans annotate`: brat .txt files in, .ann files out, on the service's pipeline; here or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import Commands

RAY_OPTIONS = ("address", "actors", "gpus_per_actor", "cpus_per_actor")  # RayOptions' fields
RAY_ONLY = (*RAY_OPTIONS, "parquet")


def register(sub: Commands) -> None:
    p = sub.add_parser("annotate", help="brat .txt files in, .ann files out, on the service's pipeline")
    # Strings, not paths: with --engine ray they may be URIs (s3://bucket/prefix), which Path would mangle.
    p.add_argument("in_dir", help="a folder of .txt files (with --engine ray also a URI pyarrow reads)")
    p.add_argument("out_dir", help="where the .ann files and annotate-summary.json go")
    p.add_argument("--bundle", type=Path)
    p.add_argument(
        "--given-entities",
        action="store_true",
        help="read entities from the .ann beside each .txt and add only relations (track 2)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=1_000_000,
        help="longer documents fail (listed in the summary) instead of holding a worker for hours",
    )
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="docs/scaling.md")
    ray = p.add_argument_group("--engine ray (the `ray` extra; docs/scaling.md)")
    ray.add_argument("--address", help="a running Ray cluster (auto, ray://HOST:10001); default: a local Ray")
    ray.add_argument("--actors", type=int, help="actors, each with its own models (default 1)")
    ray.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (default 0: the CPU)")
    ray.add_argument(
        "--cpus-per-actor", type=float, help="CPUs per actor, its ONNX Runtime threads (default 1)"
    )
    ray.add_argument(
        "--parquet", help="also write every annotation as one Parquet dataset here (path or URI)"
    )
    p.set_defaults(func=annotate)


def annotate(args: argparse.Namespace) -> int:
    from app.errors import InputError
    from app.settings import Settings

    settings = Settings(bundle=args.bundle) if args.bundle else Settings()
    if args.engine == "ray":
        from app.annotate_ray import RayOptions, annotate_ray

        given = {k: getattr(args, k) for k in RAY_OPTIONS if getattr(args, k) is not None}
        summary = annotate_ray(
            settings,
            args.in_dir,
            args.out_dir,
            RayOptions(**given),
            args.given_entities,
            args.max_chars,
            args.parquet,
        )
    else:
        from app.annotate import annotate_dir
        from app.service import Extractor

        wrong = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) is not None]
        if wrong:
            raise InputError(f"{', '.join(wrong)}: only with --engine ray")
        extractor = Extractor(settings)
        summary = annotate_dir(
            extractor, Path(args.in_dir), Path(args.out_dir), args.given_entities, args.max_chars
        )
    print(", ".join(f"{k}: {v:,}" for k, v in sorted(summary.items())) or "no .txt files found")
    return 1 if summary["failed"] else 0
