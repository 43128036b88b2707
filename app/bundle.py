"""Model bundles: a directory with `manifest.json`, a tokenizer and ONNX files per model and variant.

The manifest describes the bundle completely (format version, labels, markers, length, files with their
checksums, precisions and providers, and the decoding its dev figures were measured with), so the service
needs nothing but this directory and ONNX Runtime.
`check_bundle` names every problem it finds; `load_bundle` refuses a bundle with any.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from app import faults
from app.errors import BundleError
from app.pipeline import Tagger, TaggerSpec, decoding_settings
from app.text.subwords import WordPieces
from app.text.tags import BIO_LABELS, RELATION_LABELS

log = logging.getLogger(__name__)

FORMAT = "renersans-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXPECTED_LABELS = {"entity": BIO_LABELS, "relation": RELATION_LABELS}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest; a bundle is made by `renersans export` (README: Training)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; this "
            f"service reads {FORMAT!r} version {FORMAT_VERSION}: re-export the bundle with this version"
        )
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def decoding(manifest: dict[str, Any], root: Path | str = "") -> dict[str, Any]:
    """The bundle's decoding settings as Pipeline keyword arguments, all of them: those it leaves out (a
    bundle from before they were recorded leaves out all) take the pipeline's defaults."""
    try:
        return decoding_settings(manifest.get("decoding", {}))
    except ValueError as exc:
        where = Path(root) / MANIFEST if root else MANIFEST
        raise BundleError(f"{where}: {exc}: correct it, or remove the setting for the default") from exc


def check_bundle(root: Path, load_sessions: bool = True) -> list[str]:
    """Every problem with the bundle at `root`, as sentences naming the file; empty when it is sound."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except BundleError as exc:
        return [str(exc)]
    problems = []
    try:
        decoding(manifest, root)
    except BundleError as exc:
        problems.append(str(exc))
    models = manifest.get("models", {})
    if "ner" not in models:
        problems.append(f"{root / MANIFEST}: no 'ner' model")
    for name, model in models.items():
        where = f"{root / MANIFEST} models.{name}"
        for head, labels in model.get("labels", {}).items():
            if tuple(labels) != EXPECTED_LABELS.get(head):
                problems.append(f"{where}: labels of head {head!r} differ from this version's {head} labels")
        tok_path = root / model.get("tokenizer", "")
        if not tok_path.is_file():
            problems.append(f"{tok_path}: tokenizer file missing")
        else:
            try:
                tok = Tokenizer.from_file(str(tok_path))
                for m in model.get("marker_tokens", []):
                    if tok.token_to_id(m) is None:
                        problems.append(f"{tok_path}: marker token {m!r} missing")
            except Exception as exc:  # the tokenizers library raises plain Exceptions for corrupt files
                problems.append(f"{tok_path}: not a tokenizer.json ({exc})")
        if not model.get("variants"):
            problems.append(f"{where}: no variants")
        for vname, variant in model.get("variants", {}).items():
            if "derive" in variant:
                problems.extend(_derived_problems(root, where, vname, variant["derive"], model["variants"]))
                continue
            if "file" not in variant:
                problems.append(f"{where}: variant {vname!r} names no file and no derivation")
                continue
            path = root / variant["file"]
            if not path.is_file():
                problems.append(f"{path}: ONNX file of variant {vname!r} missing")
                continue
            if variant.get("sha256") and sha256(path) != variant["sha256"]:
                problems.append(f"{path}: checksum differs from the manifest (corrupt or replaced)")
                continue
            if load_sessions:
                try:
                    session = _session(path, [CPU])
                except Exception as exc:
                    problems.append(f"{path}: ONNX Runtime cannot load it ({str(exc)[:200]})")
                    continue
                outputs = {o.name: o for o in session.get_outputs()}
                for head, out_name in model.get("outputs", {}).items():
                    if out_name not in outputs:
                        problems.append(f"{path}: output {out_name!r} for head {head!r} missing")
                    elif outputs[out_name].shape[-1] != len(model["labels"][head]):
                        problems.append(
                            f"{path}: output {out_name!r} has {outputs[out_name].shape[-1]} classes, "
                            f"the manifest lists {len(model['labels'][head])} labels"
                        )
    return problems


def _derived_problems(
    root: Path, where: str, name: str, spec: dict[str, Any], variants: dict[str, Any]
) -> list[str]:
    from app.derive import METHODS, SMOOTHED

    source = variants.get(spec.get("from"), {})
    if "file" not in source:
        return [
            f"{where}: variant {name!r} derives from {spec.get('from')!r}, which the bundle does not ship"
        ]
    if spec.get("method") not in METHODS:
        return [
            f"{where}: variant {name!r}: unknown derivation {spec.get('method')!r}; this version knows "
            f"{list(METHODS)}: upgrade the service or force another variant (RENERSANS_VARIANT)"
        ]
    if spec.get("method") in SMOOTHED or spec.get("calibration"):
        path = root / spec.get("calibration", "")
        if not spec.get("calibration") or not path.is_file():
            return [f"{where}: variant {name!r} needs the calibration file {path}, missing: restore it"]
        if spec.get("calibration_sha256") and sha256(path) != spec["calibration_sha256"]:
            return [f"{path}: checksum differs from the manifest (corrupt or replaced)"]
    return []


def variant_file(
    root: Path, manifest: dict[str, Any], model: str, variant: str, cache_dir: Path | None = None
) -> Path:
    """The ONNX file of `variant`: shipped in the bundle, or derived on this host and cached (app/derive)."""
    info = manifest["models"][model]
    entry = info["variants"][variant]
    if "derive" not in entry:
        return Path(root) / entry["file"]
    from app.derive import cached_variant, default_cache_dir

    return cached_variant(Path(root), model, variant, info, cache_dir or default_cache_dir())


def _session(path: Path, providers: list[str], threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


@dataclass
class Choice:
    variant: str
    providers: list[str]
    reason: str


def choose(manifest: dict[str, Any], model: str, variant: str = "auto", device: str = "auto") -> Choice:
    """The variant and providers for this hardware: CUDA when onnxruntime sees a GPU, else the CPU variant.

    `variant` or `device` other than "auto" force the choice (an operator's configuration)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    variants = manifest["models"][model]["variants"]
    has_cuda = CUDA in available
    if device == "cuda" and not has_cuda:
        log.warning("CUDA was requested but onnxruntime has no CUDA provider (%s): using the CPU", available)
    use_cuda = has_cuda and device in ("auto", "cuda")
    target = "cuda" if use_cuda else "cpu"
    if variant == "auto":
        # One variant for every model, or one per model ({"ner": "fp16", "re": "int8"}).
        default = manifest.get("default_variant", {}).get(target)
        if isinstance(default, dict):
            default = default.get(model)
        variant = default or next(iter(variants))
        reason = f"default {target} variant"
    else:
        reason = "configured"
    if variant not in variants:
        raise BundleError(f"variant {variant!r} is not in the bundle; it has {sorted(variants)}")
    providers = [CUDA, CPU] if use_cuda else [CPU]
    return Choice(variant, providers, reason)


def onnx_tagger(
    root: Path,
    manifest: dict[str, Any],
    model: str,
    choice: Choice,
    threads: int = 0,
    io_binding: bool | None = None,
    cache_dir: Path | None = None,
) -> Tagger:
    """A pipeline tagger running one ONNX file; input and output names come from the session itself.

    A derived variant is first made, or taken from `cache_dir` (app/derive.py). `io_binding` (default: on
    CUDA) binds inputs and outputs to the device explicitly, one copy each way per call, instead of letting
    `run` stage them through its own allocations."""
    info = manifest["models"][model]
    path = variant_file(root, manifest, model, choice.variant, cache_dir)
    try:
        session = _session(path, choice.providers, threads)
    except Exception as exc:  # onnxruntime raises its own exception types, not subclasses of OSError
        raise BundleError(
            f"{path}: ONNX Runtime cannot load it ({str(exc)[:300]}); restore it or re-export the bundle"
        ) from exc
    used = session.get_providers()
    if choice.providers[0] == CUDA and used[0] != CUDA:
        log.warning("%s: CUDA provider could not start, running on %s", path, used[0])
    inputs = [i.name for i in session.get_inputs()]
    heads = {head: name for head, name in info["outputs"].items()}

    def run(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = dict(zip(inputs, (faults.before_model(ids), mask), strict=True))
        results = session.run(list(heads.values()), feed)
        return {head: r.astype(np.float32, copy=False) for head, r in zip(heads, results, strict=True)}

    device = "cuda" if used[0] == CUDA else "cpu"

    def run_bound(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        binding = session.io_binding()  # one per call: callers may run concurrently
        for name, x in zip(inputs, (faults.before_model(ids), mask), strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), device)
            binding.bind_ortvalue_input(name, value)
        for name in heads.values():
            binding.bind_output(name, device)
        session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return {head: r.astype(np.float32, copy=False) for head, r in zip(heads, results, strict=True)}

    tok_path = Path(root) / info["tokenizer"]
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for corrupt files
        raise BundleError(f"{tok_path}: not a tokenizer.json ({str(exc)[:300]})") from exc
    labels = {h: tuple(v) for h, v in info["labels"].items()}
    spec = TaggerSpec(labels, info["max_pieces"], info.get("typed_markers", False), info.get("pad_id", 1))
    bound = device == "cuda" if io_binding is None else io_binding
    # Dynamic int8 scales each product's input by the range of the whole batch (app/derive.py).
    dependent = info["variants"][choice.variant].get("precision", "").startswith("int8")
    return Tagger(run_bound if bound else run, WordPieces(tokenizer), spec, used, batch_dependent=dependent)


def bundle_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def default_bundle() -> Path:
    """$RENERSANS_BUNDLE, else `models/default` in the working directory (the repository root, where the
    README's commands run), else the one beside this source tree (an editable install run elsewhere)."""
    if "RENERSANS_BUNDLE" in os.environ:
        return Path(os.environ["RENERSANS_BUNDLE"])
    here = Path("models/default")
    if (here / MANIFEST).is_file():
        return here
    return Path(__file__).resolve().parents[1] / "models" / "default"
