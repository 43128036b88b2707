"""Where the encoder's time goes: ONNX Runtime's own profile of a bundle variant, by operator type, on the
batches the pipeline really makes for corpus text.

    python -m bench.profile --bundle /tmp/bench-bundle --variant int8 [--pages 2]

The pipeline runs once on `--pages` pages of corpus text while its encoder batches are recorded; the
batches are then replayed through a profiling session of each model.
Writes bench/results/profile-<variant>.json.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.bundle import CPU, Choice, onnx_tagger, variant_file
from app.manifest import read_manifest
from app.pipeline import Pipeline
from bench.docs import DEFAULT_CORPUS, corpus_texts, pages
from bench.machine import describe, write_result
from bench.systems import ROOT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--pages", type=int, default=2)
    args = ap.parse_args(argv)

    manifest = read_manifest(args.bundle)
    choice = Choice(args.variant, [CPU], "profiled")
    batches: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    taggers = {}
    for name in manifest.models:
        tagger = onnx_tagger(args.bundle, manifest, name, choice)
        seen = batches.setdefault(name, [])

        def record(ids, mask, run=tagger.run, seen=seen):
            seen.append((ids, mask))
            return run(ids, mask)

        taggers[name] = replace(tagger, run=record)
    text = pages(corpus_texts(args.corpus), args.pages)
    Pipeline(ner=taggers["ner"], re=taggers.get("re"), decoding=manifest.decoding).extract("profile", text)

    import onnxruntime as ort

    result: dict = {"machine": describe(), "variant": args.variant, "characters": len(text), "models": {}}
    for name, recorded in batches.items():
        options = ort.SessionOptions()
        options.enable_profiling = True
        path = variant_file(args.bundle, manifest, name, args.variant)
        session = ort.InferenceSession(str(path), options, providers=[CPU])
        inputs = [i.name for i in session.get_inputs()]
        for ids, mask in recorded:
            session.run(None, dict(zip(inputs, (ids, mask), strict=True)))
        trace = Path(session.end_profiling())
        by_op: Counter[str] = Counter()
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"]
        trace.unlink()
        total = sum(by_op.values())
        result["models"][name] = {
            "batches": len(recorded),
            "kernel_ms": total / 1000,
            "share": {op: us / total for op, us in by_op.most_common() if us / total >= 0.001},
        }
        print(f"{name}: {len(recorded)} batches, {total / 1000:.0f} ms in kernels")
        for op, share in result["models"][name]["share"].items():
            print(f"  {op:28s} {100 * share:5.1f} %")
    write_result(f"profile-{args.variant}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
