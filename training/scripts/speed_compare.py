"""CPU speed of bundle variants side by side, possibly from different bundles (an old and a new manifest of
the same files, say): every round runs every system on the same dev documents, the order rotating, and each
ratio is the median of the per-round ratios to the first system.

    python -m training.scripts.speed_compare models/default:fp16 OLD:cpu-default models/default:cpu-default
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from app.manifest import read_manifest
from app.text.brat import read_corpus
from training.variants import pipeline_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+", help="BUNDLE:VARIANT (variant as `bundle measure` takes it)")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/rurebus"))
    parser.add_argument("--docs", type=int, default=5, help="dev documents: 3 shortest, then typical")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    pipes = {}
    for spec in args.systems:
        bundle, _, variant = spec.rpartition(":")
        pipes[spec] = pipeline_for(Path(bundle), read_manifest(Path(bundle)), variant)
    first = read_manifest(Path(args.systems[0].rpartition(":")[0]))
    gold = sorted(first.dev_split(read_corpus(args.corpus))[0], key=lambda d: len(d.text))
    # The shortest keep the run short; a few from the first quartile stand for a typical report's pages.
    docs = (gold[:3] + gold[len(gold) // 4 :])[: args.docs]
    words = sum(len(d.text.split()) for d in docs)
    for pipe in pipes.values():
        pipe.extract("warm-up", docs[0].text)
    names = list(pipes)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            for d in docs:
                pipes[name].extract(d.name, d.text)
            times[name].append(time.perf_counter() - started)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
    print(f"{len(docs)} dev documents, {words:,} words, {args.rounds} rounds")
    for name in names:
        ratios = [b / t for b, t in zip(times[names[0]], times[name], strict=True)]
        print(
            f"{name}: {words / statistics.median(times[name]):.0f} words/s, "
            f"{statistics.median(ratios):.3f}x {names[0]} (rounds {', '.join(f'{x:.2f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
