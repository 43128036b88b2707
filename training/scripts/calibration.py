"""How well a bundle's scores are calibrated on its dev documents: reliability diagrams and ECE.

    python -m training.scripts.calibration models/default ../shared/rurebus --png training/calibration.png \
        --json runs/calibration.json

An entity is right when a gold entity has its type and exact span; a relation (given the gold entities, and
end to end) when a gold relation has its type and both arguments' types and spans, in either order (the shared
task's rule, as app/metric.py scores it). ECE is the mean gap between confidence and accuracy over ten equal
width bins, weighted by how many scores fall in each. The script also fits, per kind, the map the service can
apply to a score (a bundle's decoding: `sigmoid(logit(p) / T + shift)`), once with a temperature alone and
once with a shift beside it, and reports the ECE of each with two-fold cross-validation over documents, so
that no figure is measured on the documents its map was fitted on. `--outcomes` refits from an earlier run's
`--json`; `--served` reads the scores as the bundle reports them, its maps applied (the ECE of what users
see), instead of raw.

A relation's score takes in its entities' (app/pipeline.py: `joint_score`), so end to end it moves with the
entities' map too. Every relation decided is counted, whatever the bundle's `min_relation_score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.manifest import read_manifest
from app.metric import relation_keys
from app.text.brat import Document, read_corpus
from training.variants import CPU_DEFAULT, pipeline_for

BINS = 10
KINDS = ("entities", "relations given gold entities", "relations end to end")
RAW = {"entity_score_temperature": 1.0, "entity_score_shift": 0.0}
RAW |= {"relation_score_temperature": 1.0, "relation_score_shift": 0.0}
TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(20.0), 93))
SHIFTS = np.linspace(-2.0, 2.0, 81)


def entity_outcomes(predicted: Document, gold: Document) -> list[tuple[float, bool]]:
    spans = {(e.type, e.start, e.end) for e in gold.entities}
    return [(e.score, (e.type, e.start, e.end) in spans) for e in predicted.entities if e.score is not None]


def relation_outcomes(predicted: Document, gold: Document) -> list[tuple[float, bool]]:
    # Right as the shared task's metric counts it (app/metric.py): both arguments with their type and span.
    right = {(t, frozenset((a, b))) for t, a, b in relation_keys(gold)}
    by_id = predicted.entity_by_id()
    return [
        (r.score, (r.type, frozenset((by_id[r.arg1].span, by_id[r.arg2].span))) in right)
        for r in predicted.relations
        if r.score is not None
    ]


def ece(scores: np.ndarray, right: np.ndarray) -> float:
    edges = np.minimum((scores * BINS).astype(int), BINS - 1)
    gap = 0.0
    for b in range(BINS):
        inside = edges == b
        if inside.any():
            gap += inside.sum() * abs(right[inside].mean() - scores[inside].mean())
    return float(gap / max(len(scores), 1))


def reliability(scores: np.ndarray, right: np.ndarray) -> list[dict]:
    edges = np.minimum((scores * BINS).astype(int), BINS - 1)
    return [
        {
            "bin": [b / BINS, (b + 1) / BINS],
            "count": int((edges == b).sum()),
            "confidence": float(scores[edges == b].mean()),
            "accuracy": float(right[edges == b].mean()),
        }
        for b in range(BINS)
        if (edges == b).any()
    ]


def calibrated(scores: np.ndarray, temperature: float, shift: float = 0.0) -> np.ndarray:
    """The service's map of a score (app/pipeline.py: calibrated), over an array."""
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-(np.log(p / (1 - p)) / temperature + shift)))


def fit(scores: np.ndarray, right: np.ndarray, shifts: Sequence[float] = (0.0,)) -> tuple[float, float]:
    """The (temperature, shift) with the least negative log-likelihood of the outcomes."""

    def nll(t: float, b: float) -> float:
        p = np.clip(calibrated(scores, t, b), 1e-6, 1 - 1e-6)
        return float(-np.mean(np.where(right, np.log(p), np.log(1 - p))))

    return min(((float(t), float(b)) for t in TEMPERATURES for b in shifts), key=lambda tb: nll(*tb))


def crossed_ece(per_doc: Sequence[list[tuple[float, bool]]], shifts: Sequence[float]) -> float:
    """ECE with two folds by document (even and odd dev documents), each fold's scores mapped with what
    was fitted on the other: a figure not measured on the documents the map was fitted on."""
    folds = [[x for i, doc in enumerate(per_doc) if i % 2 == k for x in doc] for k in (0, 1)]
    total, count = 0.0, 0
    for k in (0, 1):
        train, held = _arrays(folds[1 - k]), _arrays(folds[k])
        total += len(held[0]) * ece(calibrated(held[0], *fit(*train, shifts)), held[1])
        count += len(held[0])
    return total / max(count, 1)


def _arrays(pairs: Sequence[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s for s, _ in pairs], dtype=float), np.array([r for _, r in pairs], dtype=bool)


def summary(per_doc: Sequence[list[tuple[float, bool]]]) -> dict:
    scores, right = _arrays([x for doc in per_doc for x in doc])
    temperature, _ = fit(scores, right)
    both = fit(scores, right, SHIFTS)
    return {
        "count": len(scores),
        "accuracy": float(right.mean()),
        "mean_score": float(scores.mean()),
        "ece": ece(scores, right),
        "reliability": reliability(scores, right),
        "temperature": temperature,
        "ece_tempered_cross_validated": crossed_ece(per_doc, (0.0,)),
        "temperature_and_shift": list(both),
        "ece_calibrated_cross_validated": crossed_ece(per_doc, SHIFTS),
        "reliability_calibrated": reliability(calibrated(scores, *both), right),
        # Every (score, right) pair by document, so that another map can be fitted without a model pass
        # (`--outcomes`).
        "outcomes": [[[round(float(s), 6), bool(r)] for s, r in doc] for doc in per_doc],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2))
    for ax, (kind, r) in zip(np.atleast_1d(axes), results.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        t, b = r["temperature_and_shift"]
        lines = (("reliability", "scores"), ("reliability_calibrated", f"T = {t:.2f}, shift {b:+.2f}"))
        for key, label in lines:
            bins = r[key]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
        ax.set_title(f"{kind}: ECE {r['ece']:.3f} (n = {r['count']:,})", fontsize=10)
        ax.set_xlabel("score")
        ax.set_ylabel("share right")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def outcomes(bundle: Path, corpus: Path, variant: str, served: bool = False) -> tuple[int, dict[str, list]]:
    """(dev documents, per kind the (score, right) pairs of each dev document): raw scores, or with
    `served` as the bundle maps them."""
    manifest = read_manifest(bundle)
    gold, _ = manifest.dev_split(read_corpus(corpus))
    pipe = pipeline_for(bundle, manifest, variant)
    # Raw scores: a map the bundle already applies would be fitted twice. No relation bar: it would hide the
    # low scores whose calibration is measured.
    maps = {} if served else RAW
    pipe.decoding = dataclasses.replace(pipe.decoding, **maps, min_relation_score=0.0)
    found: dict[str, list] = {kind: [] for kind in KINDS}
    for doc in tqdm(gold, desc="dev documents", unit="doc"):
        predicted = pipe.extract(doc.name, doc.text)
        found["entities"].append(entity_outcomes(predicted, doc))
        found["relations end to end"].append(relation_outcomes(predicted, doc))
        given = pipe.relations_for(doc.name, doc.text, doc.entities)
        found["relations given gold entities"].append(relation_outcomes(given, doc))
    return len(gold), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--variant", default=CPU_DEFAULT, help="fp32, fp16, int8 or cpu-default (the CPU's)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument(
        "--outcomes", type=Path, help="refit from an earlier run's --json instead of running the models"
    )
    parser.add_argument("--served", action="store_true", help="scores with the bundle's maps, not raw")
    args = parser.parse_args()
    if args.outcomes:
        earlier = json.loads(args.outcomes.read_text())
        documents = earlier["dev_documents"]
        found = {kind: [[tuple(x) for x in doc] for doc in earlier[kind]["outcomes"]] for kind in KINDS}
    else:
        documents, found = outcomes(args.bundle, args.corpus, args.variant, args.served)
    results = {kind: summary(found[kind]) for kind in KINDS}
    for kind, r in results.items():
        t, b = r["temperature_and_shift"]
        print(
            f"{kind}: n={r['count']:,} accuracy={r['accuracy']:.3f} mean score={r['mean_score']:.3f} "
            f"ECE={r['ece']:.4f}; two-fold cross-validated, T={r['temperature']:.2f}: "
            f"{r['ece_tempered_cross_validated']:.4f}, T={t:.2f} and shift {b:+.2f}: "
            f"{r['ece_calibrated_cross_validated']:.4f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"bundle": str(args.bundle), "variant": args.variant, "served": args.served}
        record |= {"dev_documents": documents, **results}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
