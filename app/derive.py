"""Variants a bundle derives on the host instead of shipping: `int8` for the CPU, made from the `fp16` file.

The default bundle has room for one copy of each model within its size budget, and fp16 is the copy that
serves a GPU. On a CPU int8 runs faster within the dev F1 a shipped variant may lose, so the manifest may
declare `"int8": {"derive": {"from": "fp16", "method": ...}}` and the host makes it on first use: the fp16
graph widened to fp32 (every fp16 value is exact in fp32), then dynamic int8 quantization (`quantize_int8`,
one implementation for the exporter and the host). Four methods:

- `int8-dynamic`: the graph as it is, each layer's second feed-forward projection kept in fp32.
- `int8-smooth`: first SmoothQuant (Xiao et al., 2023, `smooth`): each quantized product's input channels
  divided by a per-channel factor and its weight rows multiplied by it, exact in fp32, so that a few
  channels with outliers no longer set the int8 scale of the whole tensor. The factors come from activation
  maxima recorded on training documents (`activation_maxima`, `renersans bundle calibrate`) and shipped in
  the bundle; with them every encoder product is quantized, the feed-forward projections included. It is the
  fastest variant but loses more dev F1 than a shipped variant may, so it is opt-in.
- `int8-smooth-ffn`: SmoothQuant on the second feed-forward projections only, the products `int8-dynamic`
  keeps in fp32, and then every encoder product in int8: faster than `int8-dynamic` and as accurate on the
  relation model (which derived its int8 so until `int8-ffn-outliers`).
- `int8-ffn-outliers`: the second feed-forward projections split by input channel (`split_outliers`): the
  channel with the widest recorded range (in 7 of the 12 layers one GELU output reaches 11 to 71 where the
  others stay under 7) is multiplied in fp32 apart, the rest in int8, so the outlier no longer sets the int8
  scale of its tensor. Exact in fp32, like smoothing, but it leaves the other channels' values as they are.
  Every encoder product is then int8 but the outliers'. Both models of the default bundle derive their int8
  so: on the entity model, where smoothing lost 0.006 end to end, it is as accurate as fp16 and faster than
  `int8-dynamic`.

The figures of each: training/RESULTS.md.

The result is cached under a key of the source file's checksum, the method (and calibration) and ONNX
Runtime's version, so later starts load it directly; `renersans bundle derive` makes it ahead of time (the
CPU image does so at build time), and `renersans cache prune` removes the files an upgrade left behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import BundleError
from app.manifest import Derivation, Manifest, ModelInfo, Variant, read_manifest, sha256

log = logging.getLogger(__name__)

METHODS = ("int8-dynamic", "int8-smooth", "int8-smooth-ffn", "int8-ffn-outliers")
SMOOTHED = ("int8-smooth", "int8-smooth-ffn")
CALIBRATED = (*SMOOTHED, "int8-ffn-outliers")  # the methods that read a calibration file
# Input channels of each second feed-forward projection kept in fp32 by `int8-ffn-outliers`: in most layers of
# the default bundle's models one GELU output's range stands far above the rest (training/RESULTS.md).
OUTLIER_CHANNELS = 1
OUTLIERS = "/outliers"  # the name's suffix of the fp32 product over those channels
# SmoothQuant's migration strength: the share of an input channel's range moved into the weights. The value
# whose int8 logits came closest to fp32's on relation and entity batches of training and dev documents, of
# 0.5 to 0.95 (training/RESULTS.md).
SMOOTH_ALPHA = 0.75
CALIBRATION_FILE = "calibration.npz"
# The variants a bundle can declare instead of shipping, as their manifest entries.
DERIVABLE = {
    "int8": Variant(
        derive=Derivation(source="fp16", method="int8-dynamic"),
        precision="int8 weights",
        providers=("CPUExecutionProvider",),
    )
}
# Bump when the derivation changes, so that caches made by the old one are not reused.
DERIVE_VERSION = 1


def default_cache_dir() -> Path:
    """$RENERSANS_CACHE_DIR, else $XDG_CACHE_HOME/renersans, else ~/.cache/renersans."""
    if os.environ.get("RENERSANS_CACHE_DIR"):
        return Path(os.environ["RENERSANS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "renersans"


def quantization_exclusions(graph: Any, calibrated: bool = False) -> list[str]:
    """MatMul nodes left in fp32 by the int8 variant: the tagging heads, the outlier channels' products
    (`split_outliers`), and unless the graph was prepared from calibration (smoothed or split) each layer's
    second feed-forward projection.

    Dynamic quantization gives activations one int8 scale per tensor, and the GELU outputs feeding the
    second projection have the widest range in the layer: keeping them in fp32 is what brings the NER
    model's dev F1 within what a shipped variant may lose (training/RESULTS.md, "Int8 quantization
    schemes"). Smoothing tames those ranges, and then the projections, a third of the encoder's products,
    run in int8 too."""
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and (
            not n.name.startswith("/model/encoder/")
            or n.name.endswith(OUTLIERS)
            or (not calibrated and second_projection(n))
        )
    ]


def second_projection(node: Any) -> bool:
    """Whether `node` is a layer's second feed-forward projection (the one reading the GELU outputs)."""
    return node.name.endswith("/output/dense/MatMul") and "/attention/" not in node.name


def smoothing_targets(graph: Any) -> list[Any]:
    """The products int8 quantizes in the encoder: each MatMul (in the optimized graph: attention's output
    projection and both feed-forward projections) and the fused attention's packed input projection. Each
    reads its activations as input 0 and its weight, [input channels, outputs], as input 1."""
    return [
        n
        for n in graph.node
        if n.op_type == "Attention" or (n.op_type == "MatMul" and n.name.startswith("/model/encoder/"))
    ]


class ActivationProbe:
    """The fp32 `model` (an onnx ModelProto, not changed) run for its outputs, recording on the way, per input
    channel, the largest |activation| each smoothing target reads over the real (unmasked) pieces."""

    def __init__(self, model: Any) -> None:
        import onnx
        import onnxruntime as ort

        probe = copy.deepcopy(model)
        self.outputs = [o.name for o in probe.graph.output]
        self.names = sorted({n.input[0] for n in smoothing_targets(probe.graph)} - set(self.outputs))
        for name in self.names:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.maxima: dict[str, np.ndarray] = {}

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs by name for one batch; the maxima are updated."""
        values = self.session.run(self.outputs + self.names, dict(zip(self.inputs, (ids, mask), strict=True)))
        real = mask.astype(bool)
        for name, x in zip(self.names, values[len(self.outputs) :], strict=True):
            rows = x[real] if x.shape[:2] == real.shape else x.reshape(-1, x.shape[-1])
            top = np.abs(rows).max(0)
            self.maxima[name] = top if name not in self.maxima else np.maximum(self.maxima[name], top)
        return dict(zip(self.outputs, values, strict=False))


def activation_maxima(model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """`ActivationProbe`'s maxima over `batches`."""
    probe = ActivationProbe(model)
    for ids, mask in batches:
        probe(ids, mask)
    return probe.maxima


def smooth(model: Any, maxima: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA) -> Any:
    """SmoothQuant, in place on an fp32 graph: for each target with recorded maxima, input channel j is
    divided by s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) (a `Mul` before the product) and the weight's
    row j multiplied by it. In exact arithmetic the outputs do not change; what changes is that an outlier
    channel no longer stretches the one int8 scale its whole tensor gets."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    targets = {n.name for n in smoothing_targets(graph)}
    nodes = []
    for node in graph.node:
        # A weight shared with another node (tied embeddings) cannot be rescaled for one of them alone.
        if node.name in targets and node.input[0] in maxima and uses.get(node.input[1]) == 1:
            tensor = weights.get(node.input[1])
            if tensor is not None:
                w = numpy_helper.to_array(tensor)
                floor = np.float32(1e-5)
                scale = np.maximum(maxima[node.input[0]], floor) ** alpha / np.maximum(
                    np.abs(w).max(1), floor
                ) ** (1 - alpha)
                scale = scale.astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(w * scale[:, None], tensor.name))
                inverse = numpy_helper.from_array(1 / scale, f"{node.name}/smooth/inverse")
                graph.initializer.append(inverse)
                out = f"{node.name}/smooth/output"
                mul = helper.make_node("Mul", [node.input[0], inverse.name], [out], f"{node.name}/smooth")
                nodes.append(mul)
                node.input[0] = out
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def split_outliers(model: Any, maxima: dict[str, np.ndarray], count: int = OUTLIER_CHANNELS) -> Any:
    """In place on an fp32 graph: each second feed-forward projection `x @ w` with recorded maxima becomes
    `(x * keep) @ w_rest + x[..., top] @ w[top]`, `top` its `count` input channels of widest range, `keep`
    zero there and one elsewhere, `w_rest` the weight with those rows zeroed. In exact arithmetic the output
    does not change; the first product, quantized, gets a scale set by the other channels, and the second
    (named with `OUTLIERS`) stays in fp32."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        tensor = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if tensor is None or not second_projection(node) or node.input[0] not in maxima:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(tensor)
        top = np.sort(np.argsort(-maxima[node.input[0]])[:count]).astype(np.int64)
        keep = np.ones(w.shape[0], np.float32)
        keep[top] = 0
        rest = w.copy()
        rest[top] = 0
        tensor.CopyFrom(numpy_helper.from_array(rest, tensor.name))
        p = node.name
        w_top = f"{p}{OUTLIERS}/weight"
        graph.initializer.extend(
            [
                numpy_helper.from_array(keep, f"{p}/keep"),
                numpy_helper.from_array(top, f"{p}/top"),
                numpy_helper.from_array(w[top], w_top),
            ]
        )
        x, out = node.input[0], node.output[0]
        nodes += [
            helper.make_node("Mul", [x, f"{p}/keep"], [f"{p}/rest"], f"{p}/rest"),
            helper.make_node("MatMul", [f"{p}/rest", node.input[1]], [f"{p}/rest/output"], p),
            helper.make_node("Gather", [x, f"{p}/top"], [f"{p}/top/output"], f"{p}/top", axis=-1),
            helper.make_node("MatMul", [f"{p}/top/output", w_top], [f"{p}{OUTLIERS}/output"], p + OUTLIERS),
            helper.make_node("Add", [f"{p}/rest/output", f"{p}{OUTLIERS}/output"], [out], f"{p}/sum"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def quantize_int8(fp32_path: Path, out_path: Path, calibrated: bool = False) -> None:
    """Dynamic int8 quantization of an fp32 graph (optimized or not), per channel, with the exclusions."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    # The quantizer advises static pre-processing on the root logger at every call; this scheme was
    # measured without it (training/RESULTS.md), so the advice is kept out of the service's log.
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(out_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=quantization_exclusions(graph, calibrated),
            # The fused operators are outside ONNX's shape inference; their outputs are float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Please consider to run pre-processing")


def widen_to_fp32(model: Any) -> Any:
    """The fp16 graph in fp32, in place: initializers, constants, casts and declared types.

    The exporter's fp16 graph is its fp32 graph with every float tensor halved and casts at the outputs
    (`keep_io_types`), so widening each fp16 value gives the fp32 graph back with fp16-rounded weights."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT

    def widen(tensor: Any) -> None:
        if tensor.data_type == fp16:
            tensor.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
            )

    graph = model.graph
    for tensor in graph.initializer:
        widen(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.TENSOR:
                widen(attr.t)
            elif attr.name == "to" and node.op_type == "Cast" and attr.i == fp16:
                attr.i = fp32
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = fp32
    return model


def derive(
    source: Path, method: str, out_path: Path, calibration: Path | None = None, alpha: float = SMOOTH_ALPHA
) -> None:
    """Make the derived variant `method` of the ONNX file `source` at `out_path` (the calibrated methods read
    their activation maxima from `calibration`)."""
    try:
        import onnx
    except ImportError as exc:
        raise BundleError(
            "deriving the int8 variant needs the `onnx` package, which the `serve` extra installs: "
            "`pip install -e '.[serve]'` again, or set RENERSANS_VARIANT=fp16"
        ) from exc

    if method not in METHODS:
        raise BundleError(f"unknown derivation {method!r}; this version knows {list(METHODS)}")
    calibrated = method in CALIBRATED
    if calibrated and (calibration is None or not Path(calibration).is_file()):
        raise BundleError(
            f"{source}: {method} needs the calibration file {calibration}; restore the bundle, or make one "
            "with `renersans bundle calibrate`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        wide = Path(tmp) / "model.fp32.onnx"
        model = widen_to_fp32(onnx.load(str(source)))
        if calibrated:
            with np.load(calibration) as stored:
                maxima = {name: stored[name].astype(np.float32) for name in stored.files}
            if method in ("int8-smooth-ffn", "int8-ffn-outliers"):
                ffn = {n.input[0] for n in smoothing_targets(model.graph) if second_projection(n)}
                maxima = {name: m for name, m in maxima.items() if name in ffn}
            if method == "int8-ffn-outliers":
                split_outliers(model, maxima)
            else:
                smooth(model, maxima, alpha)
        onnx.save(model, str(wide))
        # Smoothed or split, every encoder product but the outliers' is quantized.
        quantize_int8(wide, out_path, calibrated)


PARTIAL = ".part"  # a derived file being written
# Names `cached_path` gives: model, variant, source checksum (and calibration), method, versions.
CACHED_NAME = re.compile(
    r"^(?P<model>\w+)\.(?P<variant>\w+)\.(?P<source>[0-9a-f]{16}(?:-[0-9a-f]{8}(?:-a[\d.]+)?)?)"
    r"-(?P<method>int8-[a-z-]+?)-v(?P<version>\d+)-ort(?P<ort>.+)\.onnx$"
)


def _derivation(root: Path, model: str, variant: str, info: ModelInfo) -> tuple[Derivation, Path]:
    """The derivation of `variant` and the shipped file it starts from."""
    spec = info.variants[variant].derive
    assert spec is not None, f"{variant} of {model} is shipped, not derived"
    source = info.variants.get(spec.source)
    if source is None or source.file is None:
        raise BundleError(
            f"{root}: variant {variant!r} of {model!r} derives from {spec.source!r}, not shipped"
        )
    return spec, root / source.file


def cached_path(root: Path, model: str, variant: str, info: ModelInfo, cache_dir: Path) -> Path:
    """Where the derived `variant` of `model` is cached: named by its source file's checksum, the method
    (and calibration), this derivation's version and ONNX Runtime's, so that no stale file is ever read."""
    import onnxruntime as ort

    spec, source = _derivation(root, model, variant, info)
    digest = (info.variants[spec.source].sha256 or sha256(source))[:16]
    calibration = root / spec.calibration if spec.calibration else None
    if calibration is not None and calibration.is_file():
        # New maxima are a new derivation: the key names them, so a stale file is never reused.
        digest += f"-{sha256(calibration)[:8]}"
        if spec.method in SMOOTHED:
            digest += f"-a{_alpha(spec)}"
    key = f"{digest}-{spec.method}-v{DERIVE_VERSION}-ort{ort.__version__}"
    return Path(cache_dir) / f"{model}.{variant}.{key}.onnx"


def _alpha(spec: Derivation) -> float:
    return SMOOTH_ALPHA if spec.alpha is None else spec.alpha


def cached_variant(root: Path, model: str, variant: str, info: ModelInfo, cache_dir: Path) -> Path:
    """The file of a derived variant: from the cache, or derived now (seconds) and cached."""
    path = cached_path(root, model, variant, info, cache_dir)
    if path.is_file():
        return path
    spec, source = _derivation(root, model, variant, info)
    calibration = root / spec.calibration if spec.calibration else None
    started = time.perf_counter()
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # Written beside its final name and renamed, so a crash or a second process never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=PARTIAL)
        os.close(fd)
    except OSError as exc:
        raise BundleError(
            f"cannot write the derived {variant} variant of {model!r} to {cache_dir} ({exc}): set "
            f"RENERSANS_CACHE_DIR to a writable directory, or RENERSANS_VARIANT={spec.source}"
        ) from exc
    try:
        derive(source, spec.method, Path(tmp), calibration, _alpha(spec))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a service running as another user
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info(
        "model %s: derived %s from %s in %.1f s -> %s",
        model,
        variant,
        spec.source,
        time.perf_counter() - started,
        path,
    )
    stale = prune_cache(cache_dir, dry_run=True)
    if stale:
        log.info(
            "%s holds %d derived files this installation no longer reads (%.0f MB): `renersans cache prune`",
            cache_dir,
            len(stale),
            sum(size for _, size in stale) / 1e6,
        )
    return path


def cache_entries(cache_dir: Path) -> list[tuple[Path, str]]:
    """Every derived file in `cache_dir` with what it is to this installation: "current" (made by this
    derivation and ONNX Runtime), "other version" (by another: never read here), or "partial" (a write that
    did not finish)."""
    import onnxruntime as ort

    entries = []
    for path in sorted(Path(cache_dir).glob("*.onnx")) + sorted(Path(cache_dir).glob(f"tmp*{PARTIAL}")):
        match = CACHED_NAME.match(path.name)
        if path.name.endswith(PARTIAL):
            entries.append((path, "partial"))
        elif match:
            current = match["version"] == str(DERIVE_VERSION) and match["ort"] == ort.__version__
            entries.append((path, "current" if current else "other version"))
    return entries


def prune_cache(
    cache_dir: Path, keep: Sequence[Path] | None = None, dry_run: bool = False, partial_age_s: float = 3600
) -> list[tuple[Path, int]]:
    """Remove (or with `dry_run` only list) the derived files this installation will not read again: those
    made by another derivation or ONNX Runtime version, and partial writes older than `partial_age_s` (a
    younger one may be a derivation under way). With `keep` (bundle directories), also every current file
    that is not one of those bundles' derived variants. Other files in the directory are left alone.
    Returns each file removed with its size in bytes."""
    wanted: set[Path] = set()
    for root in keep or ():
        for model, info in read_manifest(Path(root)).models.items():
            for variant, entry in info.variants.items():
                if entry.derive is not None:
                    wanted.add(cached_path(Path(root), model, variant, info, cache_dir))
    removed = []
    for path, state in cache_entries(cache_dir):
        if state == "partial":
            stale = time.time() - path.stat().st_mtime > partial_age_s
        else:
            stale = state == "other version" or (keep is not None and path not in wanted)
        if stale:
            removed.append((path, path.stat().st_size))
            if not dry_run:
                path.unlink(missing_ok=True)
    return removed


def declare(manifest: Manifest, variant: str, cpu_default_for: Sequence[str] | None = None) -> Manifest:
    """`manifest` with `variant` declared derived in every model (so it can be forced), and made the CPU's
    default for the models in `cpu_default_for` (all when None, none when empty); the others keep theirs."""
    if variant not in DERIVABLE:
        raise BundleError(f"variant {variant!r} cannot be derived; these can: {sorted(DERIVABLE)}")
    declared = DERIVABLE[variant]
    source = declared.derive.source if declared.derive else ""
    for name, model in manifest.models.items():
        shipped = model.variants.get(source)
        if shipped is None or shipped.file is None:
            raise BundleError(f"model {name!r} ships no {source} file to derive {variant} from")
        # A derivation already declared (a calibrated one, say) is kept.
        existing = model.variants.get(variant)
        if existing is None or existing.derive is None:
            manifest = manifest.with_variant(name, variant, declared)
    models = list(manifest.models)
    chosen = models if cpu_default_for is None else list(cpu_default_for)
    unknown = sorted(set(chosen) - set(models))
    if unknown:
        raise BundleError(f"no model {unknown} in the bundle; it has {models}")
    if not chosen:
        return manifest
    per_model = {m: variant if m in chosen else manifest.default_for("cpu", m) or source for m in models}
    cpu = variant if set(per_model.values()) == {variant} else per_model
    return dataclasses.replace(manifest, default_variant={**manifest.default_variant, "cpu": cpu})
