"""`renersans bundle check|derive|calibrate|torch|measure|decoding`: model bundles. Checking, deriving and
the decoding need only the serving install; calibrate, torch and measure import torch when they run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from app.cli.options import CACHE_DIR_HELP, CORPUS, Commands, names


def register(sub: Commands) -> None:
    actions = sub.add_parser("bundle", help="model bundles").add_subparsers(dest="action", required=True)
    _command(actions, "check", check, "validate a bundle and say exactly what is wrong with it")
    for add in (_add_derive, _add_calibrate, _add_torch, _add_measure, _add_decoding):
        add(actions)


def _command(
    actions: Commands, name: str, func: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """`renersans bundle NAME DIR ...`, run by `func`; its other arguments are the caller's to add."""
    p = actions.add_parser(name, help=help)
    p.add_argument("dir", type=Path)
    p.set_defaults(func=func)
    return p


def _add_derive(actions: Commands) -> None:
    p = _command(
        actions,
        "derive",
        derive,
        "make the bundle's derived variants (the CPU's int8, from fp16) into the cache ahead of serving",
    )
    p.add_argument("--declare", choices=["int8"], help="first declare this variant in the manifest")
    p.add_argument(
        "--cpu-default-for",
        metavar="MODELS",
        help="with --declare: comma-separated models whose CPU default it becomes (default: all)",
    )
    p.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)


def _add_calibrate(actions: Commands) -> None:
    p = _command(
        actions,
        "calibrate",
        calibrate,
        "record activation maxima on training documents for a calibrated int8 (training install)",
    )
    p.add_argument("--corpus", type=Path, default=CORPUS, help="training documents (dev ones skipped)")
    p.add_argument("--documents", type=int, default=16, help="documents to record on")
    p.add_argument("--seed", type=int, default=13, help="which documents")
    p.add_argument(
        "--method",
        choices=["int8-smooth", "int8-smooth-ffn", "int8-ffn-outliers"],
        default="int8-smooth",
        help="smooth every product, or only the second feed-forward projections, or keep those projections' "
        "outlier channels in fp32 (app/derive.py)",
    )
    p.add_argument("--models", help="comma-separated models to calibrate (default: all)")


def _add_torch(actions: Commands) -> None:
    p = _command(
        actions,
        "torch",
        torch,
        "rebuild torch checkpoints (OUT_DIR/ner, OUT_DIR/re) from the bundle's ONNX files (training install)",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--variant",
        choices=["fp32", "optimized", "fp16"],
        help="the file to read (default: the first the bundle ships of fp32, optimized, fp16)",
    )
    p.add_argument("--models", help="comma-separated models to rebuild (default: all in the bundle)")


def _add_measure(actions: Commands) -> None:
    p = _command(
        actions,
        "measure",
        measure,
        "each variant's size, dev F1 on the three tracks and CPU speed vs fp32 (training install)",
    )
    p.add_argument("--corpus", type=Path, default=CORPUS, help="holds the bundle's dev documents")
    p.add_argument(
        "--variants",
        help="comma-separated subset (default: all in the bundle); cpu-default: each model's CPU default",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--record", action="store_true", help="store the figures in the manifest and model card")
    p.add_argument(
        "--max-run-pieces",
        type=int,
        default=0,
        help="padded pieces per encoder run (default: the CPU service's; int8 answers move with batching)",
    )


def _add_decoding(actions: Commands) -> None:
    p = _command(
        actions,
        "decoding",
        decoding,
        "show the decoding settings the service uses with this bundle, or change them (--set)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="bio (viterbi, argmax), pairs (pair, either), o_bias, none_weight, min_entity_prob, "
        "join_negations (true, false), copy_gate (0: every relation copy runs, the paper's way); repeatable. "
        "Choose them on dev: training/scripts/decoding_ablation.py",
    )


def check(args: argparse.Namespace) -> int:
    from app.bundle import check_bundle

    problems = check_bundle(args.dir)
    for p in problems:
        print(f"- {p}")
    print(f"{args.dir}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def derive(args: argparse.Namespace) -> int:
    from app.bundle import check_bundle, variant_file
    from app.derive import declare, default_cache_dir
    from app.manifest import MANIFEST, read_manifest, write_manifest

    manifest = read_manifest(args.dir)
    if args.declare:
        manifest = declare(manifest, args.declare, names(args.cpu_default_for))
        write_manifest(args.dir, manifest)
        print(
            f"{args.dir / MANIFEST}: {args.declare} declared, derived from fp16; CPU default "
            f"{manifest.default_variant.get('cpu')}"
        )
    problems = check_bundle(args.dir)
    if problems:
        print("\n".join(f"- {p}" for p in problems))
        return 1
    cache = args.cache_dir or default_cache_dir()
    derived = [
        (m, v)
        for m, info in manifest.models.items()
        for v, e in info.variants.items()
        if e.derive is not None
    ]
    for model, variant in derived:
        print(f"{model} {variant}: {variant_file(args.dir, manifest, model, variant, cache)}")
    if not derived:
        print(f"{args.dir}: declares no derived variant (--declare int8 adds one)")
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import calibrate

    written = calibrate(args.dir, args.corpus, args.documents, args.seed, args.method, names(args.models))
    for model, path in written.items():
        print(f"{model}: activation maxima in {path}; int8 now derives by {args.method}")
    print(f"`renersans bundle derive {args.dir}` makes the int8 files; `bundle measure` gives their dev F1")
    return 0


def torch(args: argparse.Namespace) -> int:
    from app.manifest import read_manifest
    from training.from_onnx import checkpoint_from_bundle, import_variant

    for model in names(args.models) or list(read_manifest(args.dir).models):
        variant, path = import_variant(args.dir, model, args.variant)
        print(f"{model}: rebuilding a torch checkpoint from {path} ({variant}) ...", flush=True)
        out = checkpoint_from_bundle(args.dir, model, args.out_dir / model, variant)
        source = json.loads((out / "tagger.json").read_text())["imported_from"]
        arch, parity = source["architecture"], source["parity"]
        print(
            f"{model}: wrote {out} ({arch['layers']} layers, hidden {arch['hidden']}, {arch['heads']} heads; "
            f"logits within {parity['max_abs']:.1e} of ONNX Runtime, argmax agreement "
            f"{parity['argmax_agreement']:.4f})"
        )
    return 0


def measure(args: argparse.Namespace) -> int:
    from training.variants import measure, table

    result = measure(args.dir, args.corpus, names(args.variants), run_pieces=args.max_run_pieces)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        from training.card import record

        record(args.dir, result)
        print(f"dev figures recorded in {args.dir}/manifest.json and {args.dir}/README.md")
    return 0


def decoding(args: argparse.Namespace) -> int:
    import dataclasses

    from app.decoding import Decoding
    from app.errors import BundleError
    from app.manifest import read_manifest, write_manifest
    from app.overrides import field_types, parse_overrides

    manifest = read_manifest(args.dir)
    if args.set:
        try:
            changed = parse_overrides(args.set, field_types(Decoding))
            manifest = dataclasses.replace(
                manifest, decoding=dataclasses.replace(manifest.decoding, **changed)
            )
        except ValueError as exc:  # InputError too: a setting not written as NAME=VALUE, or not its type
            raise BundleError(f"--set: {exc}; {args.dir} is unchanged") from exc
        write_manifest(args.dir, manifest)
    print(json.dumps(manifest.decoding.settings(), indent=2))
    measured = manifest.dev_metrics.decoding if manifest.dev_metrics else None
    if measured is not None and measured.decisions() != manifest.decoding.decisions():
        print(
            f"note: the dev figures in {args.dir}/manifest.json were measured with another decoding "
            f"({json.dumps(measured.settings())}); `renersans bundle measure {args.dir} --record` "
            "measures these"
        )
    return 0
