"""`renersans annotate IN OUT --engine ray`: the same annotation as app/annotate.py, on a Ray cluster.

Ray Data reads the `.txt` files (a local folder, or any filesystem pyarrow reads: `s3://bucket/prefix`, ...),
a pool of actors each holding one `Extractor` (the models load once per actor, on a GPU when asked) makes
each document's `.ann` with `annotate_one`, and the driver writes the results as they stream back: the same
bytes, the same resume rule and the same summary file as the local engine. Writing on the driver means the
output folder needs to be reachable from the driver only; the inputs and the bundle must be reachable from
every node (docs/scaling.md). Ray is imported only here, and only when this engine runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from app.annotate import DEFAULT_MAX_CHARS, SKIPPED, SUMMARY, Outcome, Tally, ann_name, annotate_one, pending
from app.errors import BundleError, InputError
from app.settings import Settings

if TYPE_CHECKING:
    import pyarrow.fs


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None starts a local Ray
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0


def annotate_ray(
    settings: Settings,
    source: str,
    dest: str,
    options: RayOptions = RayOptions(),
    given_entities: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
    parquet: str | None = None,
) -> Counter[str]:
    """Write `dest/<relative path>.ann` for every `.txt` under `source` and `dest/annotate-summary.json`, as
    `annotate_dir` does, on Ray; with `parquet`, also one Parquet dataset of every annotation in `dest`
    (this run's and earlier runs'). `source`, `dest` and `parquet` are local paths or URIs pyarrow reads."""
    import ray

    if options.actors < 1 or options.cpus_per_actor <= 0 or options.gpus_per_actor < 0:
        raise InputError(
            "--actors must be 1 or more, --cpus-per-actor above 0 and --gpus-per-actor 0 or more"
        )
    in_fs, in_root = filesystem(source)
    out_fs, out_root = filesystem(dest)
    names = [rel for rel in listing(in_fs, in_root) if rel.endswith(".txt")]
    todo, skipped = pending(names, (rel for rel in listing(out_fs, out_root) if rel.endswith(".ann")))
    tally = Tally()
    tally.counts[SKIPPED] = skipped
    if todo or parquet:
        connect(options.address)
    if todo:
        # One bar, ours, counting documents; Ray Data's own bars would draw beside it on the same terminal.
        ray.data.DataContext.get_current().enable_progress_bars = False
        results = ray.data.read_binary_files(
            [f"{in_root}/{n}" for n in todo],
            filesystem=in_fs,
            include_paths=True,
            # Reading a text file is I/O: it reserves no CPU, or actors holding every CPU of the cluster
            # (--actors x --cpus-per-actor = its cores, the natural choice) would wait for a read forever.
            num_cpus=0,
        ).map_batches(
            Annotator,
            fn_constructor_kwargs={
                "settings": worker_settings(settings, options),
                "in_fs": in_fs if given_entities else None,
                "in_root": in_root,
                "max_chars": max_chars,
            },
            # One document a call: documents take from milliseconds to minutes, so small batches keep every
            # actor busy until the end; the pipeline batches a document's sentences itself.
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
        )
        out_fs.create_dir(out_root, recursive=True)
        with tqdm(total=len(todo), desc="annotate (ray)", unit="doc") as bar:
            for row in results.iter_rows():
                outcome = Outcome(**{k: row[k] for k in Outcome.__dataclass_fields__})
                tally.add(outcome)
                if not outcome.error:
                    write_atomic(out_fs, f"{out_root}/{ann_name(outcome.name)}", outcome.ann.encode("utf-8"))
                bar.update()
    if names:
        write_atomic(out_fs, f"{out_root}/{SUMMARY}", tally.summary().encode("utf-8"))
    if parquet:
        write_parquet(out_fs, out_root, parquet)
    return tally.counts


def connect(address: str | None) -> None:
    """Join the cluster at `address`, or without one start a local Ray on this machine's cores (stopped when
    the process ends); a caller that already ran `ray.init` keeps its cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address)


class Annotator:
    """A Ray Data actor: one Extractor, loaded once, annotating the documents of each batch."""

    def __init__(
        self,
        settings: dict[str, Any],
        in_fs: pyarrow.fs.FileSystem | None,
        in_root: str,
        max_chars: int,
    ) -> None:
        from app.service import Extractor

        started = time.perf_counter()
        self.extractor = Extractor(Settings(**settings))
        if settings["device"] == "cuda" and not self.extractor.on_cuda:
            raise BundleError(
                f"a GPU was asked for (--gpus-per-actor) but the models run on {self.extractor.providers}: "
                "check the node's driver and onnxruntime-gpu, or run without --gpus-per-actor"
            )
        self.load_seconds = time.perf_counter() - started
        self.in_fs, self.in_root, self.max_chars = in_fs, in_root, max_chars

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        outcomes = []
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            name = str(path).removeprefix(self.in_root).lstrip("/")
            outcomes.append(annotate_one(self.extractor, bytes(data), name, self.given(name), self.max_chars))
        return {key: [asdict(o)[key] for o in outcomes] for key in Outcome.__dataclass_fields__}

    def given(self, name: str) -> bytes | None:
        """The `.ann` beside the input (b"" where there is none); None without --given-entities."""
        if self.in_fs is None:
            return None
        import pyarrow.fs

        path = f"{self.in_root}/{ann_name(name)}"
        if self.in_fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return b""
        with self.in_fs.open_input_stream(path) as f:
            return f.read()


def worker_settings(settings: Settings, options: RayOptions) -> dict[str, Any]:
    """The settings each actor builds its Extractor from: the driver's bundle (an absolute path, since the
    workers run elsewhere) and variant, the device its resources give it, and as many ONNX Runtime threads
    as it has CPUs (0 would mean one per core of the node, over the actor's share). The cache of derived
    variants stays each node's own (RENERSANS_CACHE_DIR there, else ~/.cache/renersans)."""
    return {
        "bundle": str(Path(settings.bundle).resolve()),
        "variant": settings.variant,
        "device": "cuda" if options.gpus_per_actor > 0 else "cpu",
        "threads": max(1, round(options.cpus_per_actor)),
        "batch_size": settings.batch_size,
    }


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(the filesystem, the root path in it) for a local path or a URI such as `s3://bucket/prefix`."""
    import pyarrow.fs

    if "://" not in uri:
        uri = str(Path(uri).resolve())  # pyarrow takes only absolute local paths
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, root.rstrip("/")


def listing(fs: pyarrow.fs.FileSystem, root: str) -> list[str]:
    """Every file under `root`, relative to it, with / separators; none where `root` does not exist."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    return [
        info.path.removeprefix(root).lstrip("/")
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.File
    ]


def write_atomic(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write under a temporary name, then move: the local engine's rule (app/annotate.py), on any filesystem
    (object stores publish a file whole on close, and move by copying)."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    partial = path + ".partial"
    with fs.open_output_stream(partial) as f:
        f.write(data)
    fs.move(partial, path)


PARQUET_COLUMNS = ("document", "id", "kind", "type", "start", "end", "text", "arg1", "arg2")


def write_parquet(out_fs: pyarrow.fs.FileSystem, out_root: str, target: str) -> None:
    """One Parquet dataset of every annotation in the output folder's `.ann` files, one row per entity or
    relation (`kind`), replacing what `target` held. Built from the files rather than from this run's results,
    so that after a resumed run it still holds every document."""
    import pyarrow as pa
    import ray
    from ray.data import SaveMode

    anns = [f"{out_root}/{rel}" for rel in sorted(listing(out_fs, out_root)) if rel.endswith(".ann")]
    if not anns:
        return
    schema = pa.schema([(c, pa.int64() if c in ("start", "end") else pa.string()) for c in PARQUET_COLUMNS])

    def rows(batch: pa.Table) -> pa.Table:
        from app.text.brat import parse_ann

        out = []
        for data, path in zip(batch["bytes"].to_pylist(), batch["path"].to_pylist(), strict=True):
            name = path.removeprefix(out_root).lstrip("/").removesuffix(".ann")
            doc = parse_ann(data.decode("utf-8"), source=path)
            empty = {"start": None, "end": None, "text": None, "arg1": None, "arg2": None}
            for e in doc.entities:
                row = {"document": name, "id": e.id, "kind": "entity", "type": e.type}
                out.append({**empty, **row, "start": e.start, "end": e.end, "text": e.text})
            for r in doc.relations:
                row = {"document": name, "id": r.id, "kind": "relation", "type": r.type}
                out.append({**empty, **row, "arg1": r.arg1, "arg2": r.arg2})
        return pa.Table.from_pylist(out, schema=schema)

    dest_fs, dest_root = filesystem(target)
    ray.data.read_binary_files(anns, filesystem=out_fs, include_paths=True, num_cpus=0).map_batches(
        rows, batch_format="pyarrow", num_cpus=0.5
    ).write_parquet(dest_root, filesystem=dest_fs, mode=SaveMode.OVERWRITE)
