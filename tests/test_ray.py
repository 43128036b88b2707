"""`annotate --engine ray` on a real Ray cluster that the test starts (2 CPUs, two actors): the same `.ann`
bytes as the local engine on corpus documents, a rerun that redoes nothing, failing documents in the summary
file while the job goes on, and the Parquet dataset of every annotation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.annotate import SKIPPED, SUMMARY, annotate_dir
from app.service import Extractor
from app.settings import Settings
from app.text.brat import read_text

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from app.annotate_ray import RayOptions, annotate_ray  # noqa: E402 (only where ray is installed)

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"
# Small enough that the too-long document fails; the corpus documents chosen are shorter.
MAX_CHARS = 2_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray of 2 CPUs for this module; the workers inherit this process's environment (the tests'
    cache of derived variants)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four shortest corpus documents in two nested folders, one cp1251 file and one too long."""
    root = tmp_path_factory.mktemp("ray-in")
    shortest = sorted(corpus_dir.glob("train_part_*/*.txt"), key=lambda p: p.stat().st_size)[:4]
    for i, path in enumerate(shortest):
        (root / f"part{i % 2}").mkdir(exist_ok=True)
        shutil.copyfile(path, root / f"part{i % 2}" / path.name)
    (root / "cp1251.txt").write_bytes("Рост доходов населения".encode("cp1251"))
    (root / "long.txt").write_text("Рост доходов населения. " * 100, encoding="utf-8")
    return root


def ann_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.ann"))}


def test_ray_engine_equals_local_resumes_and_records_failures(
    cluster: None, inputs: Path, tmp_path: Path
) -> None:
    settings = Settings(bundle=BUNDLE)
    local = annotate_dir(Extractor(settings), inputs, tmp_path / "local", max_chars=MAX_CHARS)
    assert local["documents"] == 4 and local["failed"] == 2

    out = tmp_path / "ray"
    counts = annotate_ray(settings, str(inputs), str(out), RayOptions(actors=2), max_chars=MAX_CHARS)
    assert counts == local
    expected = ann_files(tmp_path / "local")
    assert len(expected) == 4 and ann_files(out) == expected  # byte for byte
    summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    assert (out / SUMMARY).read_bytes() == (tmp_path / "local" / SUMMARY).read_bytes()
    errors = {f["document"]: f["error"] for f in summary["failures"]}
    assert errors.keys() == {"cp1251.txt", "long.txt"}
    assert errors["cp1251.txt"].startswith("BadEncoding: cp1251.txt: not UTF-8")
    assert errors["long.txt"].startswith("PayloadTooLarge: long.txt: 2,400 characters, over the limit")

    # A rerun after an interruption: one .ann lost, the others kept as they are; with --parquet.
    lost = next(iter(expected))
    (out / lost).unlink()
    kept = {name: (out / name).stat().st_mtime_ns for name in expected if name != lost}
    parquet = tmp_path / "annotations.parquet"
    again = annotate_ray(
        settings, str(inputs), str(out), RayOptions(actors=1), max_chars=MAX_CHARS, parquet=str(parquet)
    )
    assert again["documents"] == 1 and again[SKIPPED] == 3 and again["failed"] == 2
    assert ann_files(out) == expected
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # nothing redone

    # The Parquet dataset holds every annotation of the output folder, this run's and the first run's.
    import pyarrow.parquet as pq

    rows = pq.read_table(parquet).to_pylist()
    assert len(rows) == sum(local[k] for k in ("entities", "relations"))
    assert {r["document"] for r in rows} <= {name.removesuffix(".ann") for name in expected}
    entity = next(r for r in rows if r["kind"] == "entity")
    text = read_text(inputs / f"{entity['document']}.txt")
    assert text[entity["start"] : entity["end"]] == entity["text"]


def test_command_line_runs_the_ray_engine(cluster: None, inputs: Path, tmp_path: Path) -> None:
    """`renersans annotate --engine ray` on the cluster already started (it joins it rather than starting
    another): exit status 1 for the two failing documents, the four .ann files written; Ray's options are
    refused with the local engine."""
    from app.cli import main

    out = tmp_path / "out"
    common = [str(inputs), str(out), "--bundle", str(BUNDLE), "--max-chars", str(MAX_CHARS)]
    assert main(["annotate", *common, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "2"]) == 1
    assert len(ann_files(out)) == 4
    assert len(json.loads((out / SUMMARY).read_text(encoding="utf-8"))["failures"]) == 2
    assert main(["annotate", *common, "--actors", "2"]) == 2  # the local engine: "only with --engine ray"
