"""A bundle's `manifest.json` as frozen types, read and written here and nowhere else.

The manifest describes the bundle completely: format version, per model its labels, markers, length,
tokenizer and variants (files with their checksums, precisions and providers, or how the host derives
them), the CPU's and CUDA's default variants, the dev figures and the decoding they were measured with
(`app/decoding.py`). `read_manifest` refuses a manifest this version cannot read with a message that names
the file and what to do; records of provenance (training settings, calibration documents, dev figures)
are kept as the JSON they are, since nothing decides on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.decoding import Decoding, NewerDecoding
from app.errors import BundleError
from app.text.brat import Document
from app.text.tags import Transitions

FORMAT = "renersans-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INPUTS = ("input_ids", "attention_mask")
# The keys this version reads; a manifest with others was written by a newer version (see `_known`).
TOP_KEYS = ("format", "format_version", "created", "models", "default_variant", "dev_metrics", "decoding")
MODEL_KEYS = (
    "tokenizer",
    "labels",
    "max_pieces",
    "typed_markers",
    "marker_tokens",
    "pad_id",
    "inputs",
    "outputs",
    "variants",
    "encoder",
    "training",
    "dev_documents",
    "parity_max_abs_fp32",
    "transitions",
    "context",
)
VARIANT_KEYS = ("file", "precision", "providers", "bytes", "sha256", "derive")
DERIVE_KEYS = ("from", "method", "alpha", "calibration", "calibration_sha256", "calibrated_on")


@dataclass(frozen=True)
class Derivation:
    """How the host makes a variant the bundle declares instead of shipping (app/derive.py)."""

    source: str  # the variant it is made from ("from" in the manifest)
    method: str
    alpha: float | None = None
    calibration: str | None = None  # activation maxima, relative to the bundle
    calibration_sha256: str | None = None
    calibrated_on: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Variant:
    """One precision of a model: a shipped `file`, or a `derive` the host makes from another variant."""

    precision: str = ""
    providers: tuple[str, ...] = ()
    file: str | None = None  # relative to the bundle
    bytes: int | None = None
    sha256: str | None = None  # empty or absent: not checked
    derive: Derivation | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One model of the bundle ("ner", "re") and what the pipeline must know about it."""

    tokenizer: str  # relative to the bundle
    labels: Mapping[str, tuple[str, ...]]  # head -> label names, index = class id
    max_pieces: int
    outputs: Mapping[str, str]  # head -> the ONNX output's name
    variants: Mapping[str, Variant]
    typed_markers: bool = False
    marker_tokens: tuple[str, ...] = ()
    pad_id: int = 1
    inputs: tuple[str, ...] = INPUTS
    encoder: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)  # the checkpoint's settings and provenance
    dev_documents: tuple[str, ...] = ()  # the documents held out of its training
    parity_max_abs_fp32: float | None = None
    transitions: Transitions | None = None  # the entity head's CRF (app/text/tags.py), where it has one
    context: int = 0  # pieces of neighbouring words read around each sentence (app/text/subwords.py)


@dataclass(frozen=True)
class DevMetrics:
    """The bundle's dev figures (`renersans bundle measure --record`) and the decoding they hold for."""

    split: str
    documents: int
    by_variant: Mapping[str, Mapping[str, float]]
    default: Mapping[str, float]
    decoding: Decoding | None = None


@dataclass(frozen=True)
class Manifest:
    models: Mapping[str, ModelInfo]
    # Per target ("cpu", "cuda"): one variant for every model, or one per model ({"ner": "fp16", ...}).
    default_variant: Mapping[str, str | Mapping[str, str]]
    created: str = ""
    dev_metrics: DevMetrics | None = None
    decoding: Decoding = field(default_factory=Decoding)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def default_for(self, target: str, model: str) -> str | None:
        """The default variant of `model` on `target` ("cpu", "cuda"); None where the manifest names none."""
        default = self.default_variant.get(target)
        if isinstance(default, Mapping):
            return default.get(model)
        return default

    @property
    def dev_documents(self) -> frozenset[str]:
        """The bundle's dev split: the documents its entity model was not trained on (its relation model's
        split is the same, drawn with the same split_seed), on which its dev figures are measured."""
        return frozenset(self.models["ner"].dev_documents) if "ner" in self.models else frozenset()

    def dev_split(self, documents: Iterable[Document]) -> tuple[list[Document], list[Document]]:
        """`documents` (in their order) as (the bundle's dev documents, the others)."""
        dev, rest = [], []
        for doc in documents:
            (dev if doc.name in self.dev_documents else rest).append(doc)
        return dev, rest

    def with_variant(self, model: str, name: str, variant: Variant | None) -> Manifest:
        """This manifest with `model`'s variant `name` set to `variant`, or removed where it is None."""
        info = self.models[model]
        variants = {k: v for k, v in info.variants.items() if k != name}
        if variant is not None:
            variants = {**info.variants, name: variant}
        models = {**self.models, model: dataclasses.replace(info, variants=variants)}
        return dataclasses.replace(self, models=models)


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file, as the manifest records its files' (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path | str) -> Manifest:
    """The manifest of the bundle at `root`; BundleError naming the file and what to do when it is absent,
    not JSON, of another format or version, or not what this version reads."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest; a bundle is made by `renersans export` (README: Training)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return parse_manifest(data, path)


def write_manifest(root: Path | str, manifest: Manifest) -> None:
    """Write `manifest` as `root/manifest.json`, every decoding setting included."""
    text = json.dumps(manifest_json(manifest), indent=2, ensure_ascii=False)
    (Path(root) / MANIFEST).write_text(text + "\n")


def parse_manifest(data: Any, where: Path | str = MANIFEST) -> Manifest:
    """The manifest from its JSON; BundleError naming `where` when it cannot be read."""
    if not isinstance(data, Mapping):
        raise BundleError(f"{where}: not a manifest (a JSON object): re-export the bundle")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format {data.get('format')!r} version {data.get('format_version')!r}; this "
            f"service reads {FORMAT!r} version {FORMAT_VERSION}: re-export the bundle with this version, "
            "or upgrade renersans where the bundle is newer"
        )
    try:
        decoding = Decoding.read(data.get("decoding", {}))
    except NewerDecoding as exc:
        raise BundleError(f"{where}: {exc}") from exc
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}: correct it, or remove the setting for the default") from exc
    with _reading(where, "the manifest"):
        _known(data, TOP_KEYS)
    models = {}
    for name, info in data.get("models", {}).items():
        with _reading(where, f"models.{name}"):
            models[name] = _model(info)
    with _reading(where, "dev_metrics"):
        metrics = _dev_metrics(data.get("dev_metrics") or {})
    return Manifest(
        format=data["format"],
        format_version=data["format_version"],
        created=data.get("created", ""),
        models=models,
        default_variant=data.get("default_variant", {}),
        dev_metrics=metrics,
        decoding=decoding,
    )


@contextmanager
def _reading(where: Path | str, part: str) -> Iterator[None]:
    """Errors reading `part` of the manifest as BundleError naming the file, the part and what to do."""
    try:
        yield
    except KeyError as exc:
        raise BundleError(f"{where}: {part} has no {exc}: re-export the bundle") from exc
    except (TypeError, AttributeError, ValueError) as exc:
        raise BundleError(f"{where}: {part}: {exc}") from exc


def _known(data: Mapping[str, Any], keys: Iterable[str]) -> None:
    """ValueError for a key this version does not know: a newer writer's, which it would drop."""
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ValueError(
            f"keys this version of renersans does not know ({', '.join(unknown)}): upgrade renersans, or "
            "re-export the bundle with this version"
        )


def _model(data: Mapping[str, Any]) -> ModelInfo:
    _known(data, MODEL_KEYS)
    return ModelInfo(
        tokenizer=data["tokenizer"],
        labels={head: tuple(names) for head, names in data["labels"].items()},
        max_pieces=data["max_pieces"],
        outputs=dict(data["outputs"]),
        variants={name: _variant(v) for name, v in data.get("variants", {}).items()},
        typed_markers=data.get("typed_markers", False),
        marker_tokens=tuple(data.get("marker_tokens", ())),
        pad_id=data.get("pad_id", 1),
        inputs=tuple(data.get("inputs", INPUTS)),
        encoder=data.get("encoder"),
        training=data.get("training") or {},
        dev_documents=tuple(data.get("dev_documents", ())),
        parity_max_abs_fp32=data.get("parity_max_abs_fp32"),
        transitions=_transitions(data, "transitions"),
        context=data.get("context", 0),
    )


def _transitions(data: Mapping[str, Any], key: str) -> Transitions | None:
    if data.get(key) is None:
        return None
    labels = data["labels"].get("entity", ())
    try:
        return Transitions.from_json(data[key], len(labels))
    except ValueError as exc:
        raise ValueError(f"{key} of the entity head: {exc}") from None


def _variant(data: Mapping[str, Any]) -> Variant:
    _known(data, VARIANT_KEYS)
    derive = data.get("derive")
    if derive is not None:
        _known(derive, DERIVE_KEYS)
    return Variant(
        precision=data.get("precision", ""),
        providers=tuple(data.get("providers", ())),
        file=data.get("file"),
        bytes=data.get("bytes"),
        sha256=data.get("sha256"),
        derive=None if derive is None else Derivation(source=derive["from"], **_without(derive, "from")),
    )


def _dev_metrics(data: Mapping[str, Any]) -> DevMetrics | None:
    if not data:
        return None
    decoding = Decoding.read(data["decoding"]) if "decoding" in data else None
    return DevMetrics(
        split=data.get("split", ""),
        documents=data.get("documents", 0),
        by_variant=data.get("by_variant", {}),
        default=data.get("default", {}),
        decoding=decoding,
    )


def _without(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as the JSON `write_manifest` writes."""
    metrics = manifest.dev_metrics
    return {
        "format": manifest.format,
        "format_version": manifest.format_version,
        "created": manifest.created,
        "models": {name: _model_json(info) for name, info in manifest.models.items()},
        "default_variant": _plain(manifest.default_variant),
        "dev_metrics": {} if metrics is None else _dev_metrics_json(metrics),
        "decoding": manifest.decoding.stored(),
    }


def _model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "tokenizer": info.tokenizer,
        "labels": {head: list(names) for head, names in info.labels.items()},
        "max_pieces": info.max_pieces,
        "typed_markers": info.typed_markers,
        "marker_tokens": list(info.marker_tokens),
        "pad_id": info.pad_id,
        "inputs": list(info.inputs),
        "outputs": dict(info.outputs),
        "variants": {name: _variant_json(v) for name, v in info.variants.items()},
        "encoder": info.encoder,
        "training": _plain(info.training),
        "dev_documents": list(info.dev_documents),
        "parity_max_abs_fp32": info.parity_max_abs_fp32,
        # Written only where there is a CRF: bundles without one stay readable by versions before it.
        **({"transitions": info.transitions.as_json()} if info.transitions else {}),
        # Likewise only where the model reads context: a bundle without it stays readable by older versions.
        **({"context": info.context} if info.context else {}),
    }


def _variant_json(variant: Variant) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if variant.derive is not None:
        d = variant.derive
        out["derive"] = {"from": d.source, "method": d.method}
        for key in ("alpha", "calibration", "calibration_sha256", "calibrated_on"):
            if getattr(d, key) is not None:
                out["derive"][key] = _plain(getattr(d, key))
    if variant.file is not None:
        out["file"] = variant.file
    out["precision"] = variant.precision
    out["providers"] = list(variant.providers)
    for key in ("bytes", "sha256"):
        if getattr(variant, key) is not None:
            out[key] = getattr(variant, key)
    return out


def _dev_metrics_json(metrics: DevMetrics) -> dict[str, Any]:
    out = {
        "split": metrics.split,
        "documents": metrics.documents,
        "by_variant": _plain(metrics.by_variant),
        "default": _plain(metrics.default),
    }
    if metrics.decoding is not None:
        out["decoding"] = metrics.decoding.stored()
    return out


def _plain(value: Any) -> Any:
    """Mappings and sequences as JSON's objects and arrays."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
