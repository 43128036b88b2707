"""What a figure was measured on, and what the machine can do at best: CPU, cores, GPU, library versions,
peak matmul FLOP/s measured in the same run, resident memory."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = (
    "torch",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "tokenizers",
    "fastapi",
    "uvicorn",
    "httpx",
)


# The instruction sets int8 and fp32 kernels choose between: the same "AMD EPYC" name covers a Zen 3 without
# AVX-512 and a Zen 4 with AVX-512 VNNI, whose int8 peaks differ by more than 2x (BENCHMARKS.md).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_model() -> str:
    """The CPU's name, with its family and model where the name alone does not tell the generation."""
    fields = _cpuinfo()
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def cpu_flags() -> list[str]:
    """Which of `ISA_FLAGS` the CPU has (empty where /proc/cpuinfo is not there)."""
    flags = _cpuinfo().get("flags", "").split()
    return [f for f in ISA_FLAGS if f in flags]


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for lib in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[lib] = importlib.metadata.version(lib)
    return found


def describe() -> dict[str, Any]:
    """The machine as BENCHMARKS.md records it; the load average says how contended it was."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "command": " ".join(["python", *sys.orig_argv[1:]]),
    }


def rss_mb() -> float:
    """Current resident memory of this process (Linux)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pid_rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _best(fn, seconds: float) -> float:
    """Fastest of repeated calls within `seconds` (after one warm-up): the machine's best, not its mean."""
    fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_flops(device: str = "cpu", n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """Measured peak FLOP/s: large square matmuls in torch (fp32; fp16 on CUDA) and ONNX Runtime (fp32
    MatMul, and int8 MatMulInteger, what the int8 variant's matmuls run on)."""
    peaks: dict[str, float] = {}
    flops = 2.0 * n**3
    try:
        import torch

        dtypes = [torch.float32] + ([torch.float16] if device == "cuda" else [])
        for dtype in dtypes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)

            def mm(a=a, b=b) -> None:
                a @ b
                if device == "cuda":
                    torch.cuda.synchronize()

            peaks[f"torch_{str(dtype).removeprefix('torch.')}"] = flops / _best(mm, seconds)
    except ImportError:
        pass
    if device == "cpu":
        peaks.update(_onnx_matmul_peaks(n, seconds))
    return peaks


def _onnx_matmul_peaks(n: int, seconds: float) -> dict[str, float]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    peaks = {}
    rng = np.random.default_rng(0)
    cases = {
        "onnxruntime_fp32": (
            "MatMul",
            TensorProto.FLOAT,
            TensorProto.FLOAT,
            TensorProto.FLOAT,
            rng.standard_normal((n, n), dtype=np.float32),
            rng.standard_normal((n, n), dtype=np.float32),
        ),
        "onnxruntime_int8": (
            "MatMulInteger",
            TensorProto.UINT8,
            TensorProto.INT8,
            TensorProto.INT32,
            rng.integers(0, 255, (n, n), dtype=np.uint8),
            rng.integers(-127, 127, (n, n), dtype=np.int8),
        ),
    }
    for name, (op, ta, tb, ty, a, b) in cases.items():
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])],
            "peak",
            [helper.make_tensor_value_info("a", ta, [n, n]), helper.make_tensor_value_info("b", tb, [n, n])],
            [helper.make_tensor_value_info("y", ty, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        peaks[name] = 2.0 * n**3 / _best(lambda s=session, a=a, b=b: s.run(None, {"a": a, "b": b}), seconds)
    return peaks


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    return path
