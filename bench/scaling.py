"""How time grows with document length (pages of ~1,800 characters) and with entities per sentence.

    python -m bench.scaling --bundle /tmp/bench-bundle --variant int8 [--device cuda]
        [--pages 1,3,10,30,100] [--baseline-pages 3] [--paper-pages 1]

Lengths: corpus documents concatenated to N pages; each system runs each length once (the baselines only
up to their page limits: they would take many minutes on a small CPU). Entities per sentence: corpus
sentences grouped by how many entities ours finds in them, one sentence per line; time per sentence per
system. Writes bench/results/scaling-<device>.json (`--prefix` for another name) and two PNG plots beside
it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from app.text.segment import segment
from bench.docs import corpus_texts, pages, words
from bench.machine import RESULTS, describe, peak_rss_mb, rss_mb, write_result
from bench.pipeline import run_docs
from bench.systems import SYSTEMS, add_system_args, build, resolve_checkpoints

BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 7), (8, 11), (12, 99))


def by_length(systems: dict, corpus: list, counts: list[int], limits: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for n_pages in counts:
        text = pages(corpus, n_pages)
        doc = type(corpus[0])(f"pages-{n_pages}", text, [], [])
        for name, system in systems.items():
            if n_pages > limits.get(name, 10**9):
                continue
            took, stages, out = run_docs(system, [doc])
            row = {
                "system": name,
                "pages": n_pages,
                "characters": len(text),
                "words": words(text),
                "sentences": len(segment(text)),
                "entities": len(out[0].entities),
                "seconds": took,
                "words_per_s": words(text) / took,
                "stages_ms": stages,
                "rss_mb": rss_mb(),
                "peak_rss_mb": peak_rss_mb(),  # of the process so far: every system loaded in it counts
            }
            rows.append(row)
            print(
                f"{name:6s} {n_pages:4d} pages {row['words']:6d} words {took:8.2f} s "
                f"{row['words_per_s']:7.1f} words/s  rss {row['rss_mb']:.0f} MB, "
                f"peak {row['peak_rss_mb']:.0f} MB"
            )
    return rows


def by_entities(systems: dict, corpus: list, per_bucket: int, docs: int) -> list[dict[str, Any]]:
    """Sentences grouped by the number of entities ours finds, each group timed as one document."""
    finder = systems["ours"].pipeline
    groups: dict[tuple[int, int], list[str]] = {b: [] for b in BUCKETS}
    for d in corpus[:docs]:
        sentences = segment(d.text)
        for s, spans in zip(sentences, finder.entities(d.text, sentences), strict=True):
            line = d.text[s.start : s.end]
            for lo, hi in BUCKETS:
                if lo <= len(spans) <= hi and len(groups[(lo, hi)]) < per_bucket and "\n" not in line:
                    groups[(lo, hi)].append(line)
    rows = []
    for (lo, hi), lines in groups.items():
        if not lines:
            continue
        text = "\n".join(lines)
        doc = type(corpus[0])(f"entities-{lo}-{hi}", text, [], [])
        n_sent = len(segment(text))
        for name, system in systems.items():
            took, stages, out = run_docs(system, [doc])
            rows.append(
                {
                    "system": name,
                    "bucket": [lo, hi],
                    "sentences": n_sent,
                    "words": words(text),
                    "entities_per_sentence": len(out[0].entities) / n_sent,
                    "ms_per_sentence": 1000 * took / n_sent,
                    "relation_ms_per_sentence": stages["relations"] / n_sent,
                    "relation_pieces": system.meters["re"].real,
                }
            )
            print(
                f"{name:6s} entities {lo}-{hi}: {n_sent} sentences, "
                f"{rows[-1]['entities_per_sentence']:.1f} entities/sentence, "
                f"{rows[-1]['ms_per_sentence']:.0f} ms/sentence"
            )
    return rows


def plot(lengths: list[dict], entities: list[dict], device: str, prefix: str = "scaling") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["system"] for r in lengths):
        rows = [r for r in lengths if r["system"] == name]
        ax[0].plot([r["pages"] for r in rows], [r["seconds"] for r in rows], "o-", label=name)
        ax[1].plot([r["pages"] for r in rows], [r["words_per_s"] for r in rows], "o-", label=name)
    for a, label in zip(ax, ("seconds per document", "words/s"), strict=True):
        a.set_xscale("log")
        a.set_xlabel("pages (1,800 characters)")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
        a.legend()
    ax[0].set_yscale("log")
    fig.suptitle(f"Time against document length ({device})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{prefix}-pages-{device}.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["system"] for r in entities):
        rows = [r for r in entities if r["system"] == name]
        ax.plot(
            [r["entities_per_sentence"] for r in rows], [r["ms_per_sentence"] for r in rows], "o-", label=name
        )
    ax.set_xlabel("entities per sentence (found by the system)")
    ax.set_ylabel("ms per sentence")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Time against entities per sentence ({device})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{prefix}-entities-{device}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(ap)
    ap.add_argument("--pages", default="1,3,10,30,100")
    ap.add_argument("--baseline-pages", type=int, default=3, help="longest document for baseline (b)")
    ap.add_argument("--paper-pages", type=int, default=1, help="longest document for baseline (a)")
    ap.add_argument("--per-bucket", type=int, default=6, help="sentences per entity-count group")
    ap.add_argument("--entity-docs", type=int, default=12, help="corpus documents searched for sentences")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument(
        "--prefix",
        default="scaling",
        help="results as PREFIX-<device>.json, plots PREFIX-pages-<device>.png ...",
    )
    args = resolve_checkpoints(ap.parse_args(argv))

    corpus = corpus_texts(args.corpus)
    names = args.systems.split(",")
    systems = {n: build(n, args.ner, args.re, args.bundle, args.variant, args.device) for n in names}
    for s in systems.values():
        s.extract("warm", corpus[0].text[:2000])
    limits = {"torch": args.baseline_pages, "paper": args.paper_pages}
    started = time.perf_counter()
    lengths = by_length(systems, corpus, [int(x) for x in args.pages.split(",")], limits)
    entities = by_entities(systems, corpus, args.per_bucket, args.entity_docs) if "ours" in systems else []
    plot(lengths, entities, args.device, args.prefix)
    write_result(
        f"{args.prefix}-{args.device}",
        {
            "machine": describe(),
            "device": args.device,
            "limits_pages": limits,
            "lengths": lengths,
            "entities": entities,
            "wall_seconds": time.perf_counter() - started,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
