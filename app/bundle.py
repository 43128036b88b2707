"""Model bundles: a directory with `manifest.json`, a tokenizer and ONNX files per model and variant.

The manifest (`app/manifest.py`) describes the bundle completely, so the service needs nothing but this
directory and ONNX Runtime. Here: `check_bundle` names every problem it finds (the service refuses a bundle
with any), `choose` picks each model's variant for the hardware, and `onnx_tagger` runs one as a pipeline
tagger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app import faults
from app.derive import CALIBRATED, METHODS, cached_variant, default_cache_dir
from app.errors import BundleError
from app.manifest import MANIFEST, Derivation, Manifest, ModelInfo, Variant, read_manifest, sha256
from app.pipeline import Tagger, TaggerSpec
from app.text.subwords import WordPieces
from app.text.tags import BIO_LABELS, ENTITY_TYPES, RELATION_LABELS

log = logging.getLogger(__name__)

EXPECTED_LABELS = {"entity": BIO_LABELS, "relation": RELATION_LABELS, "gate": ENTITY_TYPES}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def check_bundle(root: Path, load_sessions: bool = True) -> list[str]:
    """Every problem with the bundle at `root`, as sentences naming the file; empty when it is sound."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except BundleError as exc:
        return [str(exc)]
    problems = []
    if "ner" not in manifest.models:
        problems.append(f"{root / MANIFEST}: no 'ner' model")
    elif manifest.decoding.copy_gate > 0 and "gate" not in manifest.models["ner"].outputs:
        problems.append(
            f"{root / MANIFEST}: the decoding gates relation copies (copy_gate "
            f"{manifest.decoding.copy_gate:g}) but the entity model has no gate head; set copy_gate to 0 "
            "(`renersans bundle decoding`) or attach a gate (training/scripts/gate.py)"
        )
    for name, model in manifest.models.items():
        where = f"{root / MANIFEST} models.{name}"
        for head, labels in model.labels.items():
            if labels != EXPECTED_LABELS.get(head):
                problems.append(f"{where}: labels of head {head!r} differ from this version's {head} labels")
        problems.extend(_tokenizer_problems(root / model.tokenizer, model))
        if not model.variants:
            problems.append(f"{where}: no variants")
        for vname, variant in model.variants.items():
            if variant.derive is not None:
                problems.extend(_derived_problems(root, where, vname, variant.derive, model.variants))
            elif variant.file is None:
                problems.append(f"{where}: variant {vname!r} names no file and no derivation")
            else:
                problems.extend(_file_problems(root / variant.file, vname, variant, model, load_sessions))
    return problems


def _tokenizer_problems(path: Path, model: ModelInfo) -> list[str]:
    if not path.is_file():
        return [f"{path}: tokenizer file missing"]
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for corrupt files
        return [f"{path}: not a tokenizer.json ({exc})"]
    return [f"{path}: marker token {m!r} missing" for m in model.marker_tokens if tok.token_to_id(m) is None]


def _file_problems(
    path: Path, name: str, variant: Variant, model: ModelInfo, load_session: bool
) -> list[str]:
    """What is wrong with a shipped variant's ONNX file: missing, another checksum, or (with
    `load_session`) not loadable by ONNX Runtime or without the outputs the manifest names."""
    if not path.is_file():
        return [f"{path}: ONNX file of variant {name!r} missing"]
    if variant.sha256 and sha256(path) != variant.sha256:
        return [f"{path}: checksum differs from the manifest (corrupt or replaced)"]
    if not load_session:
        return []
    try:
        session = make_session(path, [CPU])
    except Exception as exc:
        return [f"{path}: ONNX Runtime cannot load it ({str(exc)[:200]})"]
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    for head, out_name in model.outputs.items():
        if out_name not in outputs:
            problems.append(f"{path}: output {out_name!r} for head {head!r} missing")
        elif outputs[out_name].shape[-1] != len(model.labels[head]):
            problems.append(
                f"{path}: output {out_name!r} has {outputs[out_name].shape[-1]} classes, "
                f"the manifest lists {len(model.labels[head])} labels"
            )
    return problems


def _derived_problems(
    root: Path, where: str, name: str, spec: Derivation, variants: Mapping[str, Variant]
) -> list[str]:
    source = variants.get(spec.source)
    if source is None or source.file is None:
        return [f"{where}: variant {name!r} derives from {spec.source!r}, which the bundle does not ship"]
    if spec.method not in METHODS:
        return [
            f"{where}: variant {name!r}: unknown derivation {spec.method!r}; this version knows "
            f"{list(METHODS)}: upgrade the service or force another variant (RENERSANS_VARIANT)"
        ]
    if spec.method in CALIBRATED or spec.calibration:
        path = root / (spec.calibration or "")
        if not spec.calibration or not path.is_file():
            return [f"{where}: variant {name!r} needs the calibration file {path}, missing: restore it"]
        if spec.calibration_sha256 and sha256(path) != spec.calibration_sha256:
            return [f"{path}: checksum differs from the manifest (corrupt or replaced)"]
    return []


def variant_file(
    root: Path, manifest: Manifest, model: str, variant: str, cache_dir: Path | None = None
) -> Path:
    """The ONNX file of `variant`: shipped in the bundle, or derived on this host and cached (app/derive)."""
    info = manifest.models[model]
    entry = info.variants[variant]
    if entry.derive is None:
        return Path(root) / str(entry.file)
    return cached_variant(Path(root), model, variant, info, cache_dir or default_cache_dir())


def make_session(path: Path, providers: list[str], threads: int = 0, cpu_arena: bool = True):
    """An ONNX Runtime session of the file at `path` on `providers` (`threads` intra-op threads, 0: one per
    core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # The CPU arena keeps the largest working set that concurrent runs ever needed, for the life of the
    # process. Without it each run's buffers go back to malloc, which under concurrent runs kept more than
    # the arena does (glibc: BENCHMARKS.md, "Memory"), so it stays on by default.
    options.enable_cpu_mem_arena = cpu_arena
    # A memory pattern is traced and kept for every input shape a session sees, and sentence batches come in
    # many shapes: on a CPU it kept 48 MB more at the soak's load for no speed (BENCHMARKS.md, "The outlier
    # channel apart"). CUDA keeps it, not measured there.
    options.enable_mem_pattern = providers[0] == CUDA
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


@dataclass
class Choice:
    variant: str
    providers: list[str]
    reason: str


def choose(manifest: Manifest, model: str, variant: str = "auto", device: str = "auto") -> Choice:
    """The variant and providers for this hardware: CUDA when onnxruntime sees a GPU, else the CPU variant.

    `variant` or `device` other than "auto" force the choice (an operator's configuration)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    variants = manifest.models[model].variants
    has_cuda = CUDA in available
    if device == "cuda" and not has_cuda:
        log.warning("CUDA was requested but onnxruntime has no CUDA provider (%s): using the CPU", available)
    use_cuda = has_cuda and device in ("auto", "cuda")
    target = "cuda" if use_cuda else "cpu"
    if variant == "auto":
        variant = manifest.default_for(target, model) or next(iter(variants))
        reason = f"default {target} variant"
    else:
        reason = "configured"
    if variant not in variants:
        raise BundleError(f"variant {variant!r} is not in the bundle; it has {sorted(variants)}")
    providers = [CUDA, CPU] if use_cuda else [CPU]
    return Choice(variant, providers, reason)


def onnx_tagger(
    root: Path,
    manifest: Manifest,
    model: str,
    choice: Choice,
    threads: int = 0,
    io_binding: bool | None = None,
    cache_dir: Path | None = None,
    cpu_arena: bool = True,
) -> Tagger:
    """A pipeline tagger running one ONNX file; input and output names come from the session itself.

    A derived variant is first made, or taken from `cache_dir` (app/derive.py). `io_binding` (default: on
    CUDA) binds inputs and outputs to the device explicitly, one copy each way per call, instead of letting
    `run` stage them through its own allocations. `cpu_arena`: ONNX Runtime's CPU memory arena (see
    `make_session`)."""
    info = manifest.models[model]
    path = variant_file(root, manifest, model, choice.variant, cache_dir)
    try:
        session = make_session(path, choice.providers, threads, cpu_arena)
    except Exception as exc:  # onnxruntime raises its own exception types, not subclasses of OSError
        raise BundleError(
            f"{path}: ONNX Runtime cannot load it ({str(exc)[:300]}); restore it or re-export the bundle"
        ) from exc
    used = session.get_providers()
    if choice.providers[0] == CUDA and used[0] != CUDA:
        log.warning("%s: CUDA provider could not start, running on %s", path, used[0])
    inputs = [i.name for i in session.get_inputs()]
    heads = dict(info.outputs)

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

    tok_path = Path(root) / info.tokenizer
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for corrupt files
        raise BundleError(f"{tok_path}: not a tokenizer.json ({str(exc)[:300]})") from exc
    spec = TaggerSpec(
        dict(info.labels), info.max_pieces, info.typed_markers, info.pad_id, info.transitions, info.context
    )
    bound = device == "cuda" if io_binding is None else io_binding
    # Dynamic int8 scales each product's input by the range of the whole batch (app/derive.py).
    dependent = info.variants[choice.variant].precision.startswith("int8")
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
