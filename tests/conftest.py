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
