"""Load time, warm-up time and memory of each system, each in a fresh process (so that one system's
memory and caches do not count against another).

    python -m bench.footprint --bundle /tmp/bench-bundle --variant int8 [--device cuda] [--repeats 3]

Each child process imports, loads the models (load), runs the service's warm-up sentence (warm-up), then
a one-page document, and reports its resident memory after loading and at its peak. Figures are
medians over `--repeats` rounds of all systems, interleaved. Writes bench/results/footprint-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.machine import describe, median, peak_rss_mb, rss_mb, write_result
from bench.systems import ROOT, SYSTEMS, add_system_args, resolve_checkpoints


def child(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    from app.service import WARMUP_TEXT
    from app.text.brat import Document
    from bench.docs import corpus_texts, pages
    from bench.pipeline import run_docs
    from bench.systems import build

    imported = time.perf_counter() - started
    system = build(args.child, args.ner, args.re, args.bundle, args.variant, args.device)
    loaded_rss = rss_mb()
    t = time.perf_counter()
    system.extract("warm", WARMUP_TEXT)
    warmup = time.perf_counter() - t
    doc = Document("page", pages(corpus_texts(args.corpus), 1), [], [])
    took, _, _ = run_docs(system, [doc])
    print(
        json.dumps(
            {
                "import_seconds": imported,
                "load_seconds": system.load_seconds,
                "warmup_seconds": warmup,
                "rss_after_load_mb": loaded_rss,
                "peak_rss_mb": peak_rss_mb(),
                "page_seconds": took,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", default="", help="result name (default footprint-<device>)")
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = resolve_checkpoints(ap.parse_args(argv))
    if args.child:
        child(args)
        return 0
    names = args.systems.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            cmd = [
                sys.executable,
                "-m",
                "bench.footprint",
                "--child",
                n,
                "--bundle",
                str(args.bundle),
                "--variant",
                args.variant,
                "--ner",
                str(args.ner),
                "--re",
                str(args.re),
                "--corpus",
                str(args.corpus),
                "--device",
                args.device,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(n, runs[n][-1])
    summary = {n: {k: median([x[k] for x in rs]) for k in rs[0]} for n, rs in runs.items()}
    for n, s in summary.items():
        print(
            f"{n:6s} load {s['load_seconds']:.2f} s, warm-up {s['warmup_seconds']:.2f} s, "
            f"RSS after load {s['rss_after_load_mb']:.0f} MB, peak {s['peak_rss_mb']:.0f} MB"
        )
    write_result(
        args.out or f"footprint-{args.device}",
        {"machine": describe(), "device": args.device, "runs": runs, "median": summary},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
