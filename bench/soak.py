"""Load and soak (issue #9): many concurrent clients for a few minutes against a real `renersans serve` on
127.0.0.1, mixing good requests with bad ones. Passes when every answer is the one expected (the status and
error kind of each bad request; 200 with offsets that index the text as sent, checked for every entity of
every good answer), the server reports no 5xx, and its memory does not grow.

    python -m bench.soak                          # models/default, 16 clients, 0.5 + 3.5 minutes
    python -m bench.soak --bundle DIR --clients 32 --minutes 3

Bounded: it stops by itself after --warmup-minutes + --minutes (each request has a timeout), talks to
127.0.0.1 only, and stops the server it started. Prints its figures and writes bench/results/soak.json;
BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import sys
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.service import validate_entities
from app.text.brat import Document, Entity, parse_ann
from bench.docs import DEFAULT_CORPUS, corpus_texts
from bench.machine import describe, pid_rss_mb, write_result
from bench.server import back_to_back, serve

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # the server's request size limit in this run
PARAGRAPH = 1500  # characters per good request: a long paragraph or a short page


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    answers: Counter = field(default_factory=Counter)  # (kind, status)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    entities_checked: int = 0
    relations_checked: int = 0

    def fail(self, kind: str, what: str) -> None:
        self.unexpected.append(f"{kind}: {what}"[:500])


class Unexpected(Exception):
    pass


# ---- what the clients send --------------------------------------------------------------------------------


def paragraphs(docs: list[Document], rng: random.Random, count: int) -> list[tuple[str, list[Entity]]]:
    """Slices of corpus documents cut at line breaks, with the gold entities inside them (for /relations),
    spiced with what clients send: CRLF line breaks, a leading BOM, emoji or tab."""
    out = []
    while len(out) < count:
        doc = rng.choice(docs)
        if len(doc.text) < 200:
            continue
        start = doc.text.rfind("\n", 0, rng.randrange(len(doc.text) - 100)) + 1
        end = doc.text.find("\n", start + PARAGRAPH // 2)
        end = len(doc.text) if end < 0 or end - start > 2 * PARAGRAPH else end
        original = doc.text[start:end]
        inside, last_end = [], 0
        for e in sorted(doc.entities, key=lambda e: (e.start, e.end)):
            if start + last_end <= e.start and e.end <= end and not e.discontinuous:
                inside.append(e)
                last_end = e.end - start
        spice = rng.choice(["", "\ufeff", "😀 ", "\t"])
        crlf = [i for i, ch in enumerate(original) if ch == "\n"][:2]
        text = spice + original.replace("\n", "\r\n", 2)

        def moved(i: int, spice: str = spice, crlf: list[int] = crlf) -> int:
            return len(spice) + i + sum(1 for at in crlf if at < i)

        entities = [
            Entity(f"T{n}", e.type, moved(e.start - start), moved(e.end - start), e.text)
            for n, e in enumerate(inside, start=1)
        ]
        validate_entities(text, entities)
        assert all(text[e.start : e.end] == e.text for e in entities)
        out.append((text, entities))
    return out


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def check_entities(text: str, entities: list[dict], relations: list[dict], tally: Tally) -> None:
    ids = set()
    for e in entities:
        if not (0 <= e["start"] < e["end"] <= len(text) and text[e["start"] : e["end"]] == e["text"]):
            raise Unexpected(f"entity {e} does not index the text")
        ids.add(e["id"])
    if any(r["arg1"] not in ids or r["arg2"] not in ids for r in relations):
        raise Unexpected("a relation refers to an entity not returned")
    tally.entities_checked += len(entities)
    tally.relations_checked += len(relations)


def check_ann(ann: str, text: str, tally: Tally) -> None:
    doc = parse_ann(ann, text)  # raises on any offset or text that does not match
    tally.entities_checked += len(doc.entities)
    tally.relations_checked += len(doc.relations)


Request = Callable[[httpx.AsyncClient, random.Random, Tally], Awaitable[tuple[str, int]]]


def good_requests(texts: list[tuple[str, list[Entity]]]) -> dict[str, tuple[int, Request]]:
    """name -> (weight, request); each returns (kind, status) and raises Unexpected on a wrong answer."""

    async def extract(c, rng, tally):
        text, _ = rng.choice(texts)
        r = await c.post("/extract", json={"text": text})
        if r.status_code == 200:
            body = r.json()
            check_entities(text, body["entities"], body["relations"], tally)
        return "extract", r.status_code

    async def extract_brat(c, rng, tally):
        text, _ = rng.choice(texts)
        r = await c.post("/extract?format=brat", json={"text": text})
        if r.status_code == 200:
            check_ann(r.text, text, tally)
        return "extract?format=brat", r.status_code

    async def upload(c, rng, tally):
        text, _ = rng.choice(texts)
        r = await c.post("/extract/brat", files={"file": ("doc.txt", text.encode())})
        if r.status_code == 200:
            check_ann(r.text, text, tally)
        return "extract/brat .txt", r.status_code

    async def upload_zip(c, rng, tally):
        picked = [rng.choice(texts)[0] for _ in range(2)]
        data = zip_of({f"batch/d{i}.txt": t.encode() for i, t in enumerate(picked)})
        r = await c.post("/extract/brat", files={"file": ("batch.zip", data)})
        if r.status_code == 200:
            out = zipfile.ZipFile(io.BytesIO(r.content))
            for i, t in enumerate(picked):
                check_ann(out.read(f"batch/d{i}.ann").decode(), t, tally)
        return "extract/brat .zip", r.status_code

    async def relations(c, rng, tally):
        text, entities = rng.choice(texts)
        given = [{"id": e.id, "type": e.type, "start": e.start, "end": e.end} for e in entities]
        r = await c.post("/relations", json={"text": text, "entities": given})
        if r.status_code == 200:
            ids = {e.id for e in entities}
            if any(x["arg1"] not in ids or x["arg2"] not in ids for x in r.json()["relations"]):
                raise Unexpected("a relation refers to an entity not given")
            tally.relations_checked += len(r.json()["relations"])
        return "relations", r.status_code

    async def relations_brat(c, rng, tally):
        text, entities = rng.choice(texts)
        ann = "".join(f"{e.id}\t{e.type} {e.start} {e.end}\t{e.text}\n" for e in entities)
        files = {"txt": ("d.txt", text.encode()), "ann": ("d.ann", ann.encode())}
        r = await c.post("/relations/brat", files=files)
        if r.status_code == 200:
            check_ann(r.text, text, tally)
        return "relations/brat", r.status_code

    async def tagger(c, rng, tally):
        text, _ = rng.choice(texts)
        r = await c.post("/brat/tagger", content=text.encode(), headers={"Content-Type": "text/plain"})
        if r.status_code == 200:
            for ann in r.json().values():
                ((a, b),) = ann["offsets"]
                if text[a:b] != ann["texts"][0]:
                    raise Unexpected(f"tagger span {a}-{b} does not index the text")
                tally.entities_checked += 1
        return "brat/tagger", r.status_code

    async def probe(c, rng, tally):
        path = rng.choice(["/health", "/ready", "/version", "/metrics"])
        return f"GET {path}", (await c.get(path)).status_code

    return {
        "extract": (30, extract),
        "extract_brat": (8, extract_brat),
        "upload": (8, upload),
        "upload_zip": (4, upload_zip),
        "relations": (10, relations),
        "relations_brat": (5, relations_brat),
        "tagger": (5, tagger),
        "probe": (10, probe),
    }


# name -> (weight, method, path, request arguments, expected status, expected error)
BAD: dict[str, tuple[int, str, str, dict[str, Any], int, str]] = {
    "wrong content type": (
        3,
        "POST",
        "/extract",
        {"content": b"x", "headers": {"Content-Type": "text/plain"}},
        415,
        "UnsupportedMediaType",
    ),
    "malformed JSON": (
        3,
        "POST",
        "/extract",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        422,
        "ValidationError",
    ),
    "cp1251 .txt": (
        3,
        "POST",
        "/extract/brat",
        {"files": {"file": ("a.txt", "Рост доходов".encode("cp1251"))}},
        400,
        "BadEncoding",
    ),
    "zip with ../": (
        2,
        "POST",
        "/extract/brat",
        {"files": {"file": ("a.zip", zip_of({"../evil.txt": b"x"}))}},
        400,
        "InputError",
    ),
    "zip bomb": (
        2,
        "POST",
        "/extract/brat",
        {"files": {"file": ("a.zip", zip_of({"big.txt": b"a" * (LIMIT * 25)}))}},
        400,
        "InputError",
    ),
    "garbage zip": (
        2,
        "POST",
        "/extract/brat",
        {"files": {"file": ("a.zip", bytes(range(256)) * 4)}},
        400,
        "InputError",
    ),
    "dangling relation": (
        2,
        "POST",
        "/relations/brat",
        {
            "files": {
                "txt": ("d.txt", "Рост".encode()),
                "ann": ("d.ann", "T1\tCMP 0 4\tРост\nR1\tNPS Arg1:T1 Arg2:T9\n".encode()),
            }
        },
        422,
        "BratFormatError",
    ),
    "unknown entity type": (
        2,
        "POST",
        "/relations",
        {"json": {"text": "Рост", "entities": [{"id": "T1", "type": "XYZ", "start": 0, "end": 4}]}},
        422,
        "InvalidEntities",
    ),
    "body over the limit": (
        1,
        "POST",
        "/extract",
        {"json": {"text": "а" * (LIMIT // 2 + 1000)}},
        413,
        "PayloadTooLarge",
    ),
    "unknown path": (1, "GET", "/nowhere", {}, 404, "NotFound"),
}


def bad_requests() -> dict[str, tuple[int, Request]]:
    def make(name: str, method: str, path: str, kwargs: dict, status: int, error: str) -> Request:
        async def send(c, rng, tally):
            r = await c.request(method, path, **kwargs)
            if r.status_code != status or r.json().get("error") != error:
                raise Unexpected(f"{r.status_code} {r.text[:200]} (expected {status} {error})")
            return f"bad: {name}", r.status_code

        return send

    return {name: (w, make(name, *rest)) for name, (w, *rest) in BAD.items()}


# ---- the run ----------------------------------------------------------------------------------------------


async def client(
    url: str, seed: int, mix: dict[str, tuple[int, Request]], deadline: float, tally: Tally
) -> None:
    rng = random.Random(seed)
    names = list(mix)
    weights = [mix[n][0] for n in names]
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:

        async def send() -> str | None:
            name = rng.choices(names, weights)[0]
            try:
                kind, status = await mix[name][1](c, rng, tally)
            except Unexpected as exc:
                tally.fail(name, str(exc))
                return None
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # transport errors, bodies not as promised
                tally.fail(name, f"{type(exc).__name__}: {exc}")
                return None
            tally.answers[(kind, status)] += 1
            if status != 200 and not kind.startswith("bad: "):
                tally.fail(name, f"status {status}")
            return kind

        await back_to_back(send, deadline, tally.latency)


async def sample_memory(
    pid: int, soak_from: float, deadline: float, every_s: float, samples: list[dict]
) -> None:
    started = time.monotonic()
    while time.monotonic() < deadline:
        samples.append(
            {
                "t_s": round(time.monotonic() - started, 1),
                "phase": "soak" if time.monotonic() >= soak_from else "warm-up",
                "rss_mb": round(pid_rss_mb(pid), 1),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": int(
                    next(
                        x
                        for x in Path(f"/proc/{pid}/status").read_text().split("\n")
                        if x.startswith("Threads:")
                    ).split()[1]
                ),
            }
        )
        await asyncio.sleep(every_s)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def memory_verdict(all_samples: list[dict], tolerance: float) -> dict[str, Any]:
    """Growth from the first fifth of the soak (after the warm-up has grown ONNX Runtime's arenas to the
    largest inputs) to its last fifth; a leak shows as a steady climb, which the slope over the second half
    also measures."""
    samples = [s for s in all_samples if s["phase"] == "soak"]
    n = len(samples)
    early = [s["rss_mb"] for s in samples[: max(1, n // 5)]]
    late = [s["rss_mb"] for s in samples[4 * n // 5 :] or samples]
    half = samples[n // 2 :]
    if len(half) >= 2:
        ts = [s["t_s"] / 60 for s in half]
        ys = [s["rss_mb"] for s in half]
        slope = statistics.linear_regression(ts, ys).slope
    else:
        slope = float("nan")
    baseline, final = statistics.median(early), statistics.median(late)
    return {
        "rss_warm_mb": round(baseline, 1),
        "rss_final_mb": round(final, 1),
        "rss_after_start_mb": all_samples[0]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "growth_mb": round(final - baseline, 1),
        "growth_fraction": round((final - baseline) / baseline, 4),
        "slope_second_half_mb_per_min": round(slope, 2),
        "fds_first_last": [samples[0]["fds"], samples[-1]["fds"]],
        "threads_first_last": [samples[0]["threads"], samples[-1]["threads"]],
        "ok": final - baseline <= tolerance * baseline,
    }


def server_statuses(url: str) -> Counter:
    counts: Counter = Counter()
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("renersans_requests_total{"):
            labels = dict(kv.split("=") for kv in line[line.index("{") + 1 : line.index("}")].split(","))
            counts[labels["status"].strip('"')] += float(line.split()[-1])
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=3.5, help="the soak, after the warm-up")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=0.5,
        help="first the same mix on the longest texts (every path runs, arenas fill); not in the figures",
    )
    parser.add_argument("--bad-share", type=float, default=0.25, help="share of requests that are bad")
    parser.add_argument("--memory-tolerance", type=float, default=0.05, help="allowed RSS growth (fraction)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--name", default="soak", help="bench/results/NAME.json")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for the server, e.g. cpu_arena=false (RENERSANS_CPU_ARENA); repeatable",
    )
    args = parser.parse_args(argv)
    if any("=" not in s for s in args.setting):
        parser.error("--setting takes NAME=VALUE, e.g. cpu_arena=false")
    settings = {f"RENERSANS_{k.strip().upper()}": v for k, _, v in (s.partition("=") for s in args.setting)}
    if not 0 < args.minutes + args.warmup_minutes <= 10:
        parser.error("--minutes and --warmup-minutes: at most 10 in all (a soak here is bounded)")

    rng = random.Random(args.seed)
    texts = paragraphs(corpus_texts(args.corpus), rng, 200)
    good, bad = good_requests(texts), bad_requests()
    good_weight = sum(w for w, _ in good.values())
    bad_weight = sum(w for w, _ in bad.values())
    scale = good_weight * args.bad_share / (1 - args.bad_share) / bad_weight
    mix = {**good, **{n: (w * scale, r) for n, (w, r) in bad.items()}}
    # The warm-up sends the same mix, its good requests on the longest texts only: every code path runs,
    # and ONNX Runtime's arenas grow to the largest inputs, before the memory baseline is taken.
    longest = sorted(texts, key=lambda t: len(t[0]))[-20:]
    warm = {**good_requests(longest), **{n: m for n, m in mix.items() if n in bad}}

    env = {"RENERSANS_MAX_REQUEST_BYTES": str(LIMIT), "RENERSANS_DEVICE": "cpu", **settings}
    with serve(args.bundle, ready_s=180, **env) as server:
        url, pid = server.url, server.process.pid
        machine = describe()
        print(f"server {url} (pid {pid}, log {server.log}), bundle {args.bundle}")
        print(
            f"{args.clients} clients: {args.warmup_minutes:g} min warm-up (the mix on the longest texts), "
            f"then {args.minutes:g} min with {args.bad_share:.0%} of requests bad"
        )
        warming, tally, samples = Tally(), Tally(), []
        soak_from = time.monotonic() + args.warmup_minutes * 60
        deadline = soak_from + args.minutes * 60

        async def run() -> None:
            async def one(i: int) -> None:
                await client(url, args.seed * 1000 + i, warm, soak_from, warming)
                await client(url, args.seed * 1000 + i, mix, deadline, tally)

            tally.started = soak_from
            await asyncio.gather(
                sample_memory(pid, soak_from, deadline, 5.0, samples),
                *(one(i) for i in range(args.clients)),
            )

        asyncio.run(run())
        elapsed = time.monotonic() - tally.started
        tally.unexpected[:0] = [f"warm-up {u}" for u in warming.unexpected]
        statuses = server_statuses(url)
    logged_errors = [line for line in server.output().splitlines() if '"level": "ERROR"' in line]
    result = summarise(args, machine, tally, elapsed, statuses, samples, logged_errors)
    result["warmup_requests"] = sum(warming.answers.values())
    report(result, tally)
    write_result(args.name, result)
    print("PASS" if result["ok"] else "FAIL")
    return 0 if result["ok"] else 1


def summarise(
    args: argparse.Namespace,
    machine: dict,
    tally: Tally,
    elapsed: float,
    statuses: Counter,
    samples: list[dict],
    logged_errors: list[str],
) -> dict[str, Any]:
    memory = memory_verdict(samples, args.memory_tolerance)
    total = sum(tally.answers.values())
    server_5xx = sum(v for k, v in statuses.items() if k.startswith("5"))
    per_kind = {
        kind: {
            "count": sum(v for (k, _), v in tally.answers.items() if k == kind),
            "statuses": {str(s): v for (k, s), v in sorted(tally.answers.items()) if k == kind},
            "p50_ms": round(percentile(tally.latency[kind], 0.5) * 1000, 1),
            "p95_ms": round(percentile(tally.latency[kind], 0.95) * 1000, 1),
            "p99_ms": round(percentile(tally.latency[kind], 0.99) * 1000, 1),
        }
        for kind in sorted({k for k, _ in tally.answers})
    }
    good = sum(v["count"] for k, v in per_kind.items() if not k.startswith("bad: "))
    return {
        "machine": machine,
        "bundle": str(args.bundle),
        "clients": args.clients,
        "settings": args.setting,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 2),
        "good": good,
        "bad": total - good,
        "unexpected": len(tally.unexpected),
        "unexpected_samples": tally.unexpected[:20],
        "entities_checked": tally.entities_checked,
        "relations_checked": tally.relations_checked,
        "server_statuses": dict(statuses),
        "server_5xx": server_5xx,
        "server_logged_errors": len(logged_errors),
        "server_logged_error_samples": logged_errors[:5],
        "memory": memory,
        "memory_samples": samples,
        "per_kind": per_kind,
        "ok": not tally.unexpected and server_5xx == 0 and not logged_errors and memory["ok"],
    }


def report(result: dict[str, Any], tally: Tally) -> None:
    total, seconds, good = result["requests"], result["seconds"], result["good"]
    rate = total / seconds
    print(f"{total:,} requests in {seconds:.0f} s ({rate:.1f}/s): {good:,} good, {total - good:,} bad")
    print(
        f"unexpected answers: {result['unexpected']}; server 5xx: {result['server_5xx']:g}; "
        f"errors in the server log: {result['server_logged_errors']}"
    )
    print(f"offsets verified: {tally.entities_checked:,} entities, {tally.relations_checked:,} relations")
    m = result["memory"]
    print(
        f"memory: {m['rss_warm_mb']} MB warm -> {m['rss_final_mb']} MB at the end ({m['growth_mb']:+} MB; "
        f"{m['slope_second_half_mb_per_min']:+} MB/min over the second half); max {m['rss_max_mb']} MB; "
        f"fds {m['fds_first_last']}, threads {m['threads_first_last']}"
    )
    print(f"{'kind':28} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses")
    for kind, k in result["per_kind"].items():
        times = f"{k['p50_ms']:8.1f} {k['p95_ms']:8.1f} {k['p99_ms']:8.1f}"
        print(f"{kind:28} {k['count']:7d} {times}  {k['statuses']}")
    for line in tally.unexpected[:10]:
        print(f"  unexpected: {line}")


if __name__ == "__main__":
    sys.exit(main())
