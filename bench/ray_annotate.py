"""Bulk annotation: the local `annotate` against `--engine ray` with 1 and 2 actors, on the same documents.

    python -m bench.ray_annotate [--docs 8] [--rounds 3] [--cpus 2] [--gpus-per-actor 0] [--bundle DIR]

Typical RuREBus documents (the middle of the length distribution, bench/docs.py) are copied to a temporary
folder and annotated into a fresh output folder by each engine in turn, rounds interleaved, on one local Ray
of `--cpus` CPUs started once (its start is reported apart). The engines: `local`, the command as it is
(ONNX Runtime on every core); `ray-1`, one actor holding every CPU; `ray-2`, two actors of half of them each.
Two figures per run: `job`, documents/s from the call to the last file written (models loaded and, for Ray,
the actor pool started, as a user's command would), the figure to quote; `steady`, documents/s between
the first document's result and the last, without the start. Ray hands results to the driver in bunches, so
on a few documents `steady` overstates Ray's rate: read it only on runs much longer than a bunch. Medians
over the rounds, and each Ray figure's ratio to local's. Writes bench/results/ray-annotate-cpu.json. Needs the
`ray` extra.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.docs import DEFAULT_CORPUS, corpus_texts, typical
from bench.machine import describe, median, write_result

ENGINES = ("local", "ray-1", "ray-2")


def run(engine: str, bundle: Path, src: Path, out: Path, cpus: int, gpus: float) -> tuple[int, float, float]:
    """(documents, job seconds, seconds from the first result to the last) of one engine's run."""
    from app import annotate
    from app.annotate import annotate_dir
    from app.annotate_ray import RayOptions, annotate_ray
    from app.service import Extractor
    from app.settings import Settings

    done: list[float] = []
    add = annotate.Tally.add

    def timed(self: annotate.Tally, outcome: annotate.Outcome) -> None:
        done.append(time.perf_counter())
        add(self, outcome)

    annotate.Tally.add = timed  # both engines count each result here, as it arrives
    try:
        started = time.perf_counter()
        settings = Settings(bundle=bundle)
        if engine == "local":
            counts = annotate_dir(Extractor(settings), src, out)
        else:
            actors = int(engine.split("-")[1])
            options = RayOptions(actors=actors, cpus_per_actor=cpus / actors, gpus_per_actor=gpus)
            counts = annotate_ray(settings, str(src), str(out), options)
        job = time.perf_counter() - started
    finally:
        annotate.Tally.add = add
    assert counts["failed"] == 0 and counts["documents"] == len(done), counts
    return counts["documents"], job, done[-1] - done[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="on a GPU node: each actor's GPUs (ray-2 needs twice that; onnxruntime-gpu)",
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", default="ray-annotate-cpu", help="bench/results/NAME.json")
    args = parser.parse_args()

    import ray

    docs = typical(corpus_texts(args.corpus), args.docs)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        src = work / "in"
        src.mkdir()
        paths = {p.stem: p for p in args.corpus.glob("train_part_*/*.txt")}
        for d in docs:  # the exact bytes, CRLF and all
            shutil.copyfile(paths[d.name], src / f"{d.name}.txt")
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)  # GPUs: all it sees
        ray_start = time.perf_counter() - started
        runs: dict[str, list[tuple[int, float, float]]] = {e: [] for e in ENGINES}
        for r in range(args.rounds):
            for engine in ENGINES:
                out = work / f"out-{engine}-{r}"
                runs[engine].append(
                    run(engine, args.bundle.resolve(), src, out, args.cpus, args.gpus_per_actor)
                )
                n, job, steady = runs[engine][-1]
                print(f"round {r + 1} {engine}: {n / job:.3f} docs/s job, {(n - 1) / steady:.3f} steady")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"machine": describe(), "ray_start_s": round(ray_start, 2), "documents": len(docs)}
    result["characters"] = sum(len(d.text) for d in docs)
    for engine, rows in runs.items():
        result[engine] = {
            "job_docs_per_s": round(median([n / job for n, job, _ in rows]), 4),
            "steady_docs_per_s": round(median([(n - 1) / steady for n, _, steady in rows]), 4),
            "rounds": [{"job_s": round(job, 2), "first_to_last_s": round(s, 2)} for _, job, s in rows],
        }
    print(f"\n{len(docs)} documents, {result['characters']:,} characters; Ray started in {ray_start:.1f} s")
    print(f"{'engine':8s} {'job docs/s':>11s} {'x local':>8s} {'steady docs/s':>14s} {'x local':>8s}")
    for engine in ENGINES:
        job, steady = result[engine]["job_docs_per_s"], result[engine]["steady_docs_per_s"]
        local = result["local"]
        print(
            f"{engine:8s} {job:11.3f} {job / local['job_docs_per_s']:7.2f}x {steady:14.3f} "
            f"{steady / local['steady_docs_per_s']:7.2f}x"
        )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
