"""POST /extract/batch against the same texts sent one request each, on one `renersans serve`.

    python -m bench.batch --bundle models/default --texts 16 --rounds 5 --out batch-cpu

Each round sends the texts both ways, the order of the two alternating from round to round, so that a
machine that slows down or speeds up during the run weighs on both alike. Texts are RuREBus training
passages of about 1,500 characters (bench/docs.py). Prints each way's median seconds and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from bench.docs import DEFAULT_CORPUS, corpus_texts
from bench.machine import describe, median, write_result
from bench.server import serve


def passages(corpus: Path, count: int, size: int = 1500) -> list[str]:
    """`count` passages of about `size` characters, one per document, cut at a line break."""
    out = []
    for doc in corpus_texts(corpus):
        text = doc.text[: size + 200]
        cut = text.rfind("\n", 0, size + 200)
        if cut > size // 2:
            out.append(text[:cut])
        if len(out) == count:
            break
    return out


def one_by_one(client: httpx.Client, url: str, texts: list[str]) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    answers = []
    for text in texts:
        r = client.post(f"{url}/extract", json={"text": text})
        r.raise_for_status()
        answers.append(r.json())
    return time.perf_counter() - started, answers


def batched(client: httpx.Client, url: str, texts: list[str]) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    r = client.post(f"{url}/extract/batch", json={"texts": texts})
    r.raise_for_status()
    return time.perf_counter() - started, r.json()["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write bench/results/OUT.json")
    args = parser.parse_args()
    texts = passages(args.corpus, args.texts)
    times: dict[str, list[float]] = {"one_by_one": [], "batch": []}
    ways = {"one_by_one": one_by_one, "batch": batched}
    with serve(args.bundle) as server, httpx.Client(timeout=600) as client:
        for k in range(args.rounds):
            answers = {}
            for name in list(ways)[:: 1 if k % 2 == 0 else -1]:
                seconds, answers[name] = ways[name](client, server.url, texts)
                times[name].append(seconds)
            # The same answers both ways (the test suite checks this too; a benchmark of different work
            # would measure nothing).
            same = all(
                a["entities"] == b["entities"] and a["relations"] == b["relations"]
                for a, b in zip(answers["one_by_one"], answers["batch"], strict=True)
            )
            print(
                f"round {k + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), f"same={same}"
            )
    medians = {name: median(t) for name, t in times.items()}
    ratio = medians["one_by_one"] / medians["batch"]
    chars = sum(len(t) for t in texts)
    print(
        f"{len(texts)} texts, {chars:,} characters: one by one {medians['one_by_one']:.2f} s, "
        f"batch {medians['batch']:.2f} s (median of {args.rounds}); batch {ratio:.2f}x as fast"
    )
    if args.out:
        record = {
            "machine": describe(),
            "bundle": str(args.bundle),
            "texts": len(texts),
            "characters": chars,
            "rounds": times,
            "median_s": medians,
            "batch_speedup": ratio,
        }
        write_result(args.out, record)


if __name__ == "__main__":
    main()
