"""How well a bundle's scores are calibrated on its dev documents: reliability diagrams and ECE.

    python -m training.scripts.calibration models/default ../shared/rurebus --png training/calibration.png \
        --json runs/calibration.json

An entity is right when a gold entity has its type and exact span; a relation (given the gold entities, and
end to end) when a gold relation has its type and both argument spans, in either order (the shared task's
rule). ECE is the mean gap between confidence and accuracy over ten equal-width bins, weighted by how many
scores fall in each. The script also fits one temperature per kind on the scores' log-odds
(`sigmoid(logit(p) / T)`), reporting its ECE with two-fold cross-validation over documents, so that the
figure is not measured on the documents T was fitted on.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.manifest import read_manifest
from app.text.brat import Document, read_corpus
from training.variants import CPU_DEFAULT, pipeline_for

BINS = 10
TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 161))


def entity_outcomes(predicted: Document, gold: Document) -> list[tuple[float, bool]]:
    spans = {(e.type, e.start, e.end) for e in gold.entities}
    return [(e.score, (e.type, e.start, e.end) in spans) for e in predicted.entities if e.score is not None]


def relation_outcomes(predicted: Document, gold: Document) -> list[tuple[float, bool]]:
    def keys(doc: Document) -> set[tuple[str, frozenset]]:
        by_id = {e.id: (e.start, e.end) for e in doc.entities}
        return {(r.type, frozenset((by_id[r.arg1], by_id[r.arg2]))) for r in doc.relations}

    right = keys(gold)
    by_id = {e.id: (e.start, e.end) for e in predicted.entities}
    return [
        (r.score, (r.type, frozenset((by_id[r.arg1], by_id[r.arg2]))) in right)
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


def tempered(scores: np.ndarray, temperature: float) -> np.ndarray:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))


def fit_temperature(scores: np.ndarray, right: np.ndarray) -> float:
    """The temperature with the least negative log-likelihood of the outcomes."""

    def nll(t: float) -> float:
        p = np.clip(tempered(scores, t), 1e-6, 1 - 1e-6)
        return float(-np.mean(np.where(right, np.log(p), np.log(1 - p))))

    return float(min(TEMPERATURES, key=nll))


def summary(per_doc: Sequence[list[tuple[float, bool]]]) -> dict:
    pairs = [x for doc in per_doc for x in doc]
    scores = np.array([s for s, _ in pairs])
    right = np.array([r for _, r in pairs], dtype=bool)
    # Two folds by document (even and odd dev documents): each fold's ECE with the other's temperature.
    folds = [[x for i, doc in enumerate(per_doc) if i % 2 == k for x in doc] for k in (0, 1)]
    crossed = []
    for k in (0, 1):
        fit, held = folds[1 - k], folds[k]
        t = fit_temperature(np.array([s for s, _ in fit]), np.array([r for _, r in fit], dtype=bool))
        held_scores = np.array([s for s, _ in held])
        crossed.append((len(held), ece(tempered(held_scores, t), np.array([r for _, r in held], dtype=bool))))
    temperature = fit_temperature(scores, right)
    return {
        "count": len(pairs),
        "accuracy": float(right.mean()),
        "mean_score": float(scores.mean()),
        "ece": ece(scores, right),
        "reliability": reliability(scores, right),
        "temperature": temperature,
        "ece_tempered_cross_validated": sum(n * e for n, e in crossed) / max(len(pairs), 1),
        "reliability_tempered": reliability(tempered(scores, temperature), right),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2))
    for ax, (kind, r) in zip(np.atleast_1d(axes), results.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        lines = (("reliability", "scores"), ("reliability_tempered", f"T = {r['temperature']:.2f}"))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--variant", default=CPU_DEFAULT, help="fp32, fp16, int8 or cpu-default (the CPU's)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    gold, _ = manifest.dev_split(read_corpus(args.corpus))
    pipe = pipeline_for(args.bundle, manifest, args.variant)
    entities, relations_gold, relations_e2e = [], [], []
    for doc in tqdm(gold, desc="dev documents", unit="doc"):
        predicted = pipe.extract(doc.name, doc.text)
        entities.append(entity_outcomes(predicted, doc))
        relations_e2e.append(relation_outcomes(predicted, doc))
        relations_gold.append(relation_outcomes(pipe.relations_for(doc.name, doc.text, doc.entities), doc))
    results = {
        "entities": summary(entities),
        "relations given gold entities": summary(relations_gold),
        "relations end to end": summary(relations_e2e),
    }
    for kind, r in results.items():
        print(
            f"{kind}: n={r['count']:,} accuracy={r['accuracy']:.3f} mean score={r['mean_score']:.3f} "
            f"ECE={r['ece']:.4f}; T={r['temperature']:.2f} -> ECE {r['ece_tempered_cross_validated']:.4f} "
            "(two-fold cross-validated)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"bundle": str(args.bundle), "variant": args.variant, "dev_documents": len(gold), **results}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
