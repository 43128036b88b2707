from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import LIMIT, READ_TIMEOUT_S, Served

from bench.server import serve

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "rurebus"


@pytest.fixture(scope="session", autouse=True)
def derived_variant_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Variants derived during the tests (the default bundle's int8: app/derive.py) go to a temporary
    cache, shared by the tests and the services they start, never to the user's ~/.cache."""
    path = tmp_path_factory.mktemp("derived-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RENERSANS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The RuREBus training corpus from ../shared; tests that need it skip where it is absent."""
    if not any(CORPUS.glob("train_part_*/*.ann")):
        pytest.skip(f"RuREBus training corpus not found at {CORPUS} (expected train_part_*/ with .txt/.ann)")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_checkpoints(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(corpus slice, NER checkpoint, relation checkpoint): tiny models the tests train themselves."""
    from tiny import tiny_models

    return tiny_models(corpus_dir, tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoints: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoints exported as a bundle with every variant, through the real exporter."""
    from app.cli import main

    corpus, ner, re = tiny_checkpoints
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    assert main(["export", str(ner), str(out), "--re", str(re), "--corpus", str(corpus)]) == 0
    return out


@pytest.fixture(scope="session")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real `renersans serve` on 127.0.0.1 with the tiny bundle, shared by the service's tests: a
    short read timeout, so that slow-client tests take seconds, and fault injection, so that a test can
    make one request's inference fail (app/faults.py). Tests that need other limits start their own."""
    root = tmp_path_factory.mktemp("served")
    (root / "work").mkdir()
    (root / "spool").mkdir()
    with serve(
        tiny_bundle,
        cwd=root / "work",
        TMPDIR=str(root / "spool"),
        RENERSANS_MAX_REQUEST_BYTES=str(LIMIT),
        RENERSANS_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        RENERSANS_FAULT_INJECTION="true",
    ) as server:
        yield Served(server.url, root, server.log)


@pytest.fixture(scope="session")
def server(served: Served) -> str:
    return served.url
