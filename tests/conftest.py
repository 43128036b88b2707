from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "rurebus"


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
