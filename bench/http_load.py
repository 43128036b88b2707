"""The HTTP service under load: a real `renersans serve` on 127.0.0.1 (bench/server.py: the command users
run, with its connection guard and keep-alive) and an asyncio load generator.

    python -m bench.http_load --bundle /tmp/bench-bundle --variant int8 [--device cuda]
        [--concurrency 1,4,16,64] [--level-seconds 60] [--soak 10000] [--batching-ms 2]

Four parts, each bounded in requests and time:
1. latency at concurrency 1 for a one-page document, HTTP requests interleaved with the same extraction
   in this process (the pipeline without the service), medians;
2. throughput and p50/p95/p99 latency at each concurrency, for a short document (one paragraph);
3. resident memory of the server before and after `--soak` requests of one sentence (at concurrency 16);
4. cross-request batching off and on at concurrency 16: two servers, bursts alternating between them.
The server keeps its defaults except a request queue deep enough for the highest concurrency (the
service's overload protection would otherwise answer 503 by design; that is tested elsewhere). Writes
bench/results/http-<device>.json and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.docs import corpus_texts, pages
from bench.machine import RESULTS, describe, pid_rss_mb, write_result
from bench.server import Budget, Server, back_to_back, serve
from bench.systems import add_system_args

LOGS = Path(tempfile.gettempdir())  # the servers' logs; nothing in them belongs in the repository
SENTENCE = "Рост валового регионального продукта в 2019 году составил 3,5 % по сравнению с 2018 годом."


async def load(url: str, text: str, concurrency: int, max_requests: int, seconds: float) -> dict[str, Any]:
    """`concurrency` clients posting `text` back to back until `max_requests` were sent or `seconds` ran out;
    latencies of the answered requests, errors counted (any status but 200, or no answer)."""
    by_status: dict[str, list[float]] = {}
    failed: Counter[str] = Counter()
    budget, until = Budget(max_requests), time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def send() -> str | None:
            try:
                return str((await client.post("/extract", json={"text": text})).status_code)
            except httpx.HTTPError as exc:
                failed[type(exc).__name__] += 1
                return None

        started = time.monotonic()
        await asyncio.gather(*(back_to_back(send, until, by_status, budget) for _ in range(concurrency)))
        wall = time.monotonic() - started
    latencies = by_status.pop("200", [])
    errors = {**{status: len(x) for status, x in by_status.items()}, **failed}
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def latency_vs_in_process(server: Server, text: str, args: argparse.Namespace) -> dict[str, Any]:
    """One-page latency over HTTP against the same call in this process, interleaved, medians."""
    from app.service import Extractor
    from app.settings import Settings

    settings = Settings(bundle=args.bundle, variant=args.variant, device=args.device)
    extractor = Extractor(settings)
    extractor.warmup()
    http, local, served = [], [], []
    with httpx.Client(base_url=server.url, timeout=600) as client:
        client.post("/extract", json={"text": text}).raise_for_status()
        extractor.extract(text)
        for _ in range(args.pairs):
            t = time.perf_counter()
            answer = client.post("/extract", json={"text": text})
            http.append(time.perf_counter() - t)
            answer.raise_for_status()
            # The server's own pipeline time for this very request: the service's overhead is the rest,
            # immune to load that shifts between the interleaved calls.
            served.append(sum(answer.json()["timings_ms"].values()) / 1000)
            t = time.perf_counter()
            extractor.extract(text)
            local.append(time.perf_counter() - t)
    return {
        "characters": len(text),
        "pairs": args.pairs,
        "http_ms": [x * 1000 for x in http],
        "in_process_ms": [x * 1000 for x in local],
        "server_pipeline_ms": [x * 1000 for x in served],
        "http_median_ms": 1000 * statistics.median(http),
        "in_process_median_ms": 1000 * statistics.median(local),
        "ratio_median": statistics.median(h / c for h, c in zip(http, local, strict=True)),
        "ratio_to_server_pipeline_median": statistics.median(
            h / p for h, p in zip(http, served, strict=True)
        ),
        "overhead_ms_median": 1000 * statistics.median(h - p for h, p in zip(http, served, strict=True)),
    }


def plot(levels: list[dict[str, Any]], device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    c = [x["concurrency"] for x in levels]
    ax[0].plot(c, [x["throughput_rps"] for x in levels], "o-")
    ax[0].set_ylabel("requests/s")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ax[1].plot(c, [x[key] for x in levels], "o-", label=key.removesuffix("_ms"))
    ax[1].set_ylabel("latency (ms)")
    ax[1].set_yscale("log")
    ax[1].legend()
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.grid(alpha=0.3)
    fig.suptitle(f"/extract under load, one paragraph per request ({device})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"http-{device}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(ap, checkpoints=False)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--level-requests", type=int, default=400, help="most requests per concurrency level")
    ap.add_argument("--level-seconds", type=float, default=60, help="longest time per concurrency level")
    ap.add_argument("--pairs", type=int, default=15, help="interleaved pairs for the one-page latency")
    ap.add_argument("--soak", type=int, default=10_000, help="requests between the two RSS readings")
    ap.add_argument("--soak-seconds", type=float, default=900)
    ap.add_argument("--batching-ms", type=float, default=2.0, help="batch wait for the batching comparison")
    ap.add_argument("--batching-rounds", type=int, default=3)
    ap.add_argument("--burst-seconds", type=float, default=20)
    ap.add_argument("--parts", default="latency,levels,soak,batching")
    ap.add_argument("--out", default="", help="result name (default http-<device>)")
    args = ap.parse_args(argv)

    corpus = corpus_texts(args.corpus)
    page = pages(corpus, 1)
    paragraph = pages(corpus, 1)[:400].rsplit(" ", 1)[0]
    levels_c = [int(x) for x in args.concurrency.split(",")]
    # The bundle goes as `--bundle`; these settings as the environment.
    env = {
        "RENERSANS_VARIANT": args.variant,
        "RENERSANS_DEVICE": args.device,
        "RENERSANS_MAX_QUEUE": str(max(*levels_c, 16) * 4),
    }
    parts = args.parts.split(",")
    result: dict[str, Any] = {
        "machine": describe(),
        "device": args.device,
        "server": f"renersans serve --bundle {args.bundle}",
        "server_env": env,
        "documents": {
            "page_characters": len(page),
            "paragraph_characters": len(paragraph),
            "sentence_characters": len(SENTENCE),
        },
    }
    with serve(args.bundle, log=LOGS / "renersans-bench-server.log", ready_s=300, **env) as server:
        if "latency" in parts:
            result["latency_one_page"] = r = latency_vs_in_process(server, page, args)
            print(
                f"overhead of the service {r['overhead_ms_median']:.1f} ms "
                f"({r['ratio_to_server_pipeline_median']:.3f}x its own pipeline time); "
                f"one page at concurrency 1: HTTP {r['http_median_ms']:.0f} ms, in-process "
                f"{r['in_process_median_ms']:.0f} ms, ratio {r['ratio_median']:.3f}"
            )
        if "levels" in parts:
            result["levels"] = []
            for c in levels_c:
                r = asyncio.run(
                    load(server.url, paragraph, c, max(args.level_requests, 2 * c), args.level_seconds)
                )
                result["levels"].append(r)
                print(
                    f"concurrency {c:3d}: {r['throughput_rps']:6.2f} req/s, p50 {r['p50_ms']:.0f} ms, "
                    f"p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {r['requests']} requests, "
                    f"errors {r['errors'] or 0}"
                )
            plot(result["levels"], args.device)
        if "soak" in parts:
            asyncio.run(load(server.url, SENTENCE, 16, 200, 120))  # allocator pools settle
            before = pid_rss_mb(server.process.pid)
            r = asyncio.run(load(server.url, SENTENCE, 16, args.soak, args.soak_seconds))
            after = pid_rss_mb(server.process.pid)
            result["soak"] = {
                **r,
                "rss_before_mb": before,
                "rss_after_mb": after,
                "growth": after / before - 1,
            }
            print(
                f"soak: {r['requests']} requests ({r['throughput_rps']:.1f}/s), errors {r['errors'] or 0}, "
                f"RSS {before:.0f} -> {after:.0f} MB ({100 * (after / before - 1):+.1f} %)"
            )
    if "batching" in parts:
        result["batching"] = batching(env, paragraph, args)
    write_result(args.out or f"http-{args.device}", result)
    return 0


def batching(env: dict[str, str], text: str, args: argparse.Namespace) -> dict[str, Any]:
    """Concurrency 16 against two servers, batching off and on, in alternating bursts; medians."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    wait = {"RENERSANS_BATCH_WAIT_MS": str(args.batching_ms)}
    with (
        serve(args.bundle, log=LOGS / "renersans-bench-off.log", ready_s=300, **env) as off,
        serve(args.bundle, log=LOGS / "renersans-bench-on.log", ready_s=300, **env, **wait) as on,
    ):
        servers = {"off": off, "on": on}
        for r in range(args.batching_rounds):
            for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                runs[name].append(asyncio.run(load(servers[name].url, text, 16, 10**6, args.burst_seconds)))
                x = runs[name][-1]
                print(
                    f"batching {name:3s} round {r + 1}: {x['throughput_rps']:.2f} req/s, "
                    f"p99 {x['p99_ms']:.0f} ms"
                    f", errors {x['errors'] or 0}"
                )
    out: dict[str, Any] = {"wait_ms": args.batching_ms, "concurrency": 16, "runs": runs}
    for name, rs in runs.items():
        out[name] = {
            "throughput_rps": statistics.median(x["throughput_rps"] for x in rs),
            "p99_ms": statistics.median(x["p99_ms"] for x in rs),
            "errors": sum(sum(x["errors"].values()) for x in rs),
        }
    out["throughput_ratio_on_vs_off"] = out["on"]["throughput_rps"] / out["off"]["throughput_rps"]
    print(
        f"batching: on/off throughput {out['throughput_ratio_on_vs_off']:.2f}x, p99 off "
        f"{out['off']['p99_ms']:.0f} ms, on {out['on']['p99_ms']:.0f} ms"
    )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
