"""Checkpoint averaging: one tagger whose weights are the mean of several trained from one start.

Points of one run (the shipped weights and a further run from them), or runs from one start with other
seeds, often sit in one basin of the loss, where their mean scores better than each (Izmailov et al. 2018,
"Averaging weights leads to wider optima"; Wortsman et al. 2022, "Model soups"). Serving costs nothing
more: the mean is one model of the same size. A model trained with a CRF (training/crf.py) averages with
one trained without as if that one's transitions were all 0, the scores its plain Viterbi decodes with.

    python -m training.average runs/a/best runs/b/best --out runs/avg
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from app.errors import InputError
from training.crf import BioCRF
from training.models import drop_fitted_heads, load_tagger, save_tagger


def average_checkpoints(paths: Sequence[Path], out: Path, weights: Sequence[float] | None = None) -> Path:
    """Write to `out` the tagger whose every weight (encoder, heads, CRF transitions) is the weighted mean
    of the checkpoints' (`weights` default to equal); its meta is the first checkpoint's, with the sources
    under `averaged`. InputError when they differ in labels or shapes, as taggers of different models do."""
    if len(paths) < 2:
        raise InputError("average needs two checkpoints or more")
    weights = list(weights) if weights is not None else [1.0] * len(paths)
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise InputError(f"give one non-negative weight per checkpoint ({len(paths)}), not {weights}")
    models = [load_tagger(p) for p in paths]
    first, tokenizer, meta = models[0]
    # A head fitted after training (a bundle's copy gate) that not every checkpoint has is dropped: it is
    # fitted again on the mean.
    common = set.intersection(*(set(m.labels) for m, _, _ in models))
    for model, _, _ in models:
        for head in drop_fitted_heads(model, keep=common):
            print(f"average: dropping the {head!r} head, which not every checkpoint has", file=sys.stderr)
    if any(m.crf is not None for m, _, _ in models):
        # Plain Viterbi decoding is a CRF's with every transition scored 0: a tagger without a CRF averages
        # as one with zero transitions.
        for model, _, _ in models:
            if model.crf is None and "entity" in model.labels:
                model.crf = BioCRF(model.labels["entity"])
    total = {k: v.double() * weights[0] for k, v in first.state_dict().items()}
    for path, w, (model, _, _) in zip(paths[1:], weights[1:], models[1:], strict=True):
        if model.labels != first.labels:
            raise InputError(f"{path}: other heads than {paths[0]}'s; only taggers of one model average")
        state = model.state_dict()
        if state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in total):
            raise InputError(f"{path}: weights shaped unlike {paths[0]}'s; only taggers of one model average")
        for k, v in state.items():
            total[k] += v.double() * w
    scale = sum(weights)
    first.load_state_dict({k: (v / scale).to(first.state_dict()[k].dtype) for k, v in total.items()})
    meta = {k: v for k, v in meta.items() if k not in ("labels", "transitions")}
    meta["averaged"] = [
        {"checkpoint": str(p), "weight": w, "about": about(info)}
        for p, w, (_, _, info) in zip(paths, weights, models, strict=True)
    ]
    save_tagger(first, tokenizer, Path(out), meta)
    return Path(out)


def about(info: dict) -> str:
    """One line on where a checkpoint's weights came from: its run's settings, or the bundle it was
    rebuilt from."""
    imported = info.get("imported_from")
    if imported:
        bundle = Path(imported["bundle"]).name
        return f"{imported['model']} of {bundle} ({imported['variant']}, sha256 {imported['sha256'][:12]})"
    config = info.get("config") or {}
    keys = ("init", "crf", "lr", "epochs", "seed", "output")
    settings = ", ".join(f"{k} {config[k]}" for k in keys if config.get(k) not in (None, "", False))
    return settings or "a checkpoint"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+", help="tagger checkpoints (runs/NAME/best)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", help="comma-separated, one per checkpoint (default: equal)")
    args = ap.parse_args(argv)
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        out = average_checkpoints(args.checkpoints, args.out, weights)
    except (InputError, ValueError) as e:
        print(f"average: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        sys.exit(main())
