"""Int8 quantization schemes for one model, measured side by side: dev F1 through the real ONNX Runtime
pipeline and CPU speed against fp32 in the same run (interleaved rounds, medians).

    renersans export runs/ner/best /tmp/b-ner --variants fp32,optimized
    python -m training.scripts.int8_ablation /tmp/b-ner ../shared/rurebus --json runs/int8-ablation.json

The exporter's int8 variant uses the scheme this chose (app/derive.py: quantization_exclusions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from app.derive import quantization_exclusions
from app.manifest import Variant, read_manifest
from app.text.brat import read_corpus
from training.variants import dev_scores, pipeline_for, speed


def schemes(graph: onnx.GraphProto) -> dict[str, dict]:
    """quantize_dynamic's arguments per scheme: which nodes stay fp32."""
    heads = [n.name for n in graph.node if n.op_type == "MatMul" and not n.name.startswith("/model/encoder/")]
    return {
        "int8-all": {},
        "int8-heads-fp32": {"nodes_to_exclude": heads},
        "int8-matmul-only": {"op_types_to_quantize": ["MatMul"], "nodes_to_exclude": heads},
        "int8-ffn2-heads-fp32": {"nodes_to_exclude": quantization_exclusions(graph)},
    }


def scores_of(row: dict) -> str:
    return " ".join(f"{k} {row[k]:.4f}" for k in ("ner", "re_gold", "end_to_end") if k in row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle with the fp32 and optimized variants")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--model", default="ner")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    optimized = args.bundle / str(manifest.models[args.model].variants["optimized"].file)
    graph = onnx.load(str(optimized), load_external_data=False).graph
    for name, options in schemes(graph).items():
        out = optimized.with_name(f"model.{name}.onnx")
        quantize_dynamic(
            str(optimized),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            **options,
        )
        scheme = Variant(
            file=str(out.relative_to(args.bundle)),
            precision="int8",
            providers=("CPUExecutionProvider",),
            bytes=out.stat().st_size,
        )
        manifest = manifest.with_variant(args.model, name, scheme)
    gold, _ = manifest.dev_split(read_corpus(args.corpus))
    names = ["fp32", *schemes(graph)]
    pipes = {v: pipeline_for(args.bundle, manifest, v) for v in names}
    result = {}
    for v in names:
        started = time.perf_counter()
        scores = dev_scores(pipes[v], gold, v)
        result[v] = {
            "bytes": manifest.models[args.model].variants[v].bytes,
            **scores,
            "eval_s": time.perf_counter() - started,
        }
        print(v, result[v], flush=True)
    seconds = speed(pipes, sorted(gold, key=lambda d: len(d.text))[:6], rounds=5)
    for v in names:
        result[v]["speed_vs_fp32"] = seconds["fp32"] / seconds[v]
        print(
            f"{v:22s} {result[v]['bytes'] / 1e6:6.1f} MB  dev {scores_of(result[v])}  "
            f"{result[v]['speed_vs_fp32']:.2f}x fp32"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
