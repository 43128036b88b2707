"""A copy of a bundle with one of its models taken from another bundle: a new entity model beside the
shipped relation model, or the other way round, measured as the pair the service would run.

    python -m training.scripts.replace_model models/default runs/cand-ner ner --out runs/cand

The model's files and manifest entry come from the donor. Variants the target derives on the host (the
CPU's int8) are declared again where the donor ships their source, calibrated ones only where the donor
brings the calibration. A new entity model has no copy gate (fit one: `python -m training.scripts.gate`),
so the copy's decoding goes back to every copy. The recorded dev figures are dropped: they were the old
pair's (`renersans bundle measure OUT --record` measures the new one).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from app.bundle import check_bundle
from app.errors import BundleError
from app.manifest import read_manifest, write_manifest


def replace_model(target: Path, donor: Path, model: str, out: Path) -> Path:
    """Write `out`: `target` with `donor`'s `model` ("ner" or "re"). BundleError when either lacks it or
    the result does not check."""
    into, source = read_manifest(target), read_manifest(donor)
    for where, manifest in ((target, into), (donor, source)):
        if model not in manifest.models:
            raise BundleError(f"{where}: no {model!r} model (it has {', '.join(manifest.models)})")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(target, out, ignore=shutil.ignore_patterns(model))
    shutil.copytree(Path(donor) / model, out / model)
    info = source.models[model]
    variants = dict(info.variants)
    for name, variant in into.models[model].variants.items():
        derive = variant.derive
        if name in variants or derive is None or derive.source not in variants:
            continue
        if derive.calibration and not (out / derive.calibration).is_file():
            print(f"{model}: {name} not declared: the donor brings no {derive.calibration}", file=sys.stderr)
            continue
        variants[name] = variant
    models = {**into.models, model: dataclasses.replace(info, variants=variants)}
    decoding = into.decoding
    if model == "ner" and "gate" not in info.outputs:
        decoding = dataclasses.replace(decoding, copy_gate=0.0)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = dataclasses.replace(into, models=models, decoding=decoding, dev_metrics=None, created=created)
    write_manifest(out, manifest)
    problems = check_bundle(out)
    if problems:
        raise BundleError(f"{out} does not check:\n" + "\n".join(problems))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.scripts.replace_model", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("target", type=Path, help="the bundle to copy")
    ap.add_argument("donor", type=Path, help="the bundle whose model replaces the target's")
    ap.add_argument("model", choices=("ner", "re"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        out = replace_model(args.target, args.donor, args.model, args.out)
    except BundleError as e:
        print(f"replace_model: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {args.model} from {args.donor}; measure it with `renersans bundle measure {out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
