"""Overload as clients live it: more clients than the service's slots and queue hold, each honouring the
Retry-After of a 503 Overloaded, against a real `renersans serve` with its defaults (bench/server.py).

    python -m bench.overload [--bundle models/default] [--requests 256] [--clients 64] [--chars 1500]
        [--retries 20] [--fixed-wait-s 1] [--name overload-cpu]

1. the host's throughput: `--clients-steady` (4, the default slots) clients, `--steady-requests` requests;
2. the overload: `--clients` clients share `--requests` corpus texts of `--chars` characters, each sending
   the next one as soon as its last was served, waiting Retry-After seconds on a 503 Overloaded and
   retrying up to `--retries` times; a request is served (200), refused (still 503 after the retries) or
   lost (any other answer, or none);
3. with `--fixed-wait-s S`, the same again with clients that wait S seconds whatever the header says (how
   clients fared when the service always said `Retry-After: 1`).
Writes bench/results/NAME.json: counts, retries, the Retry-After values given, and the wall time against
`requests / throughput`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import httpx

from bench.docs import DEFAULT_CORPUS, corpus_texts
from bench.machine import describe, write_result
from bench.server import ROOT, serve


def texts_of(corpus: Path, chars: int, count: int) -> list[str]:
    """`count` texts of about `chars` characters: corpus documents cut at the last space before `chars`,
    taken in turn (the corpus has fewer documents than a run has requests)."""
    cut = []
    for doc in corpus_texts(corpus):
        if len(doc.text) >= chars:
            text = doc.text[:chars]
            cut.append(text[: text.rfind(" ")] if " " in text else text)
    return list(islice(cycle(cut), count))


async def drain_with(clients: int, pending: Iterator[str], send: Callable[[str], Awaitable[None]]) -> float:
    """Seconds for `clients` concurrent clients to send every text of `pending`, each the next one free."""

    async def one_client() -> None:
        for text in pending:
            await send(text)

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.monotonic() - started


async def steady(url: str, texts: list[str], clients: int) -> dict[str, Any]:
    """Throughput with `clients` clients sending `texts` back to back (no more than the slots: no 503)."""
    pending = iter(texts)
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def send(text: str) -> None:
            statuses[str((await client.post("/extract", json={"text": text})).status_code)] += 1

        wall = await drain_with(clients, pending, send)
    return {
        "clients": clients,
        "requests": len(texts),
        "statuses": dict(statuses),
        "seconds": round(wall, 2),
        "throughput_rps": round(statuses["200"] / wall, 3),
    }


async def overload(
    url: str, texts: list[str], clients: int, retries: int, fixed_wait_s: float | None
) -> dict[str, Any]:
    """`clients` clients through `texts`, retrying 503 Overloaded after Retry-After (or `fixed_wait_s`)."""
    pending = iter(texts)
    outcome: Counter[str] = Counter()
    first: Counter[str] = Counter()
    told: Counter[int] = Counter()
    attempts: list[int] = []
    lost: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def send(text: str) -> None:
            for attempt in range(1, retries + 2):
                try:
                    r = await client.post("/extract", json={"text": text})
                except httpx.HTTPError as exc:
                    lost[type(exc).__name__] += 1
                    break
                if attempt == 1:
                    first[str(r.status_code)] += 1
                if r.status_code == 200:
                    outcome["served"] += 1
                    break
                if r.status_code != 503 or r.json().get("error") != "Overloaded":
                    lost[f"{r.status_code} {r.json().get('error')}"] += 1
                    break
                wait = int(r.headers["retry-after"])
                told[wait] += 1
                if attempt > retries:
                    outcome["refused"] += 1
                    break
                await asyncio.sleep(wait if fixed_wait_s is None else fixed_wait_s)
            attempts.append(attempt)

        wall = await drain_with(clients, pending, send)
    return {
        "clients": clients,
        "requests": len(texts),
        "waits": "Retry-After" if fixed_wait_s is None else f"{fixed_wait_s:g} s whatever Retry-After says",
        "served": outcome["served"],
        "refused": outcome["refused"],
        "lost": sum(lost.values()),
        "lost_by_kind": dict(lost),
        "first_answers": dict(first),
        "retries": sum(attempts) - len(attempts),
        "most_attempts": max(attempts),
        "retry_after_given": {str(k): v for k, v in sorted(told.items())},
        "seconds": round(wall, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = texts_of(args.corpus, args.chars, args.requests)
    result: dict[str, Any] = {"machine": describe(), "bundle": str(args.bundle), "chars": args.chars}
    with serve(args.bundle, ready_s=600) as server:
        settle = texts_of(args.corpus, args.chars, args.clients_steady)
        await steady(server.url, settle, args.clients_steady)  # warm-up: first calls allocate
        result["steady"] = steady_run = await steady(
            server.url, texts_of(args.corpus, args.chars, args.steady_requests), args.clients_steady
        )
        print("steady", steady_run)
        ideal = args.requests / steady_run["throughput_rps"]
        phases = [("honouring", None)] + ([("fixed", args.fixed_wait_s)] if args.fixed_wait_s else [])
        for name, fixed in phases:
            phase = await overload(server.url, texts, args.clients, args.retries, fixed)
            phase["wall_over_ideal"] = round(phase["seconds"] / ideal, 3)
            result[name] = phase
            print(name, phase)
        result["ideal_seconds"] = round(ideal, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--chars", type=int, default=1500, help="characters per text")
    parser.add_argument("--retries", type=int, default=20, help="retries per request after a 503")
    parser.add_argument("--clients-steady", type=int, default=4, help="clients for the throughput")
    parser.add_argument("--steady-requests", type=int, default=32)
    parser.add_argument("--fixed-wait-s", type=float, help="also run clients that wait this long instead")
    parser.add_argument("--name", default="overload-cpu", help="bench/results/NAME.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    write_result(args.name, result)
    phase = result["honouring"]
    return 0 if phase["served"] == phase["requests"] and not phase["lost"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
