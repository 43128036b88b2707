"""Encoder batches side by side (`Pipeline.workers`, `RENERSANS_ENCODER_RUNS`): the same answers, with the
batches of one request really in flight together, on models/default's real ONNX Runtime sessions."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.service import Extractor
from app.settings import Settings
from app.text.brat import read_corpus

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
pytestmark = pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)


def extractor(**settings: object) -> Extractor:
    return Extractor(Settings(_env_file=None, bundle=DEFAULT, device="cpu", **settings))


def test_batches_side_by_side_answer_as_one_at_a_time(corpus_dir: Path) -> None:
    """Both CPU int8 models, whose batches are one sentence each: every entity and relation, scores
    included, as the serial path finds them."""
    text = read_corpus(corpus_dir / "train_part_2")[3].text[:8000]
    side_by_side = extractor(threads=2, encoder_runs=2)
    serial = extractor(threads=2, encoder_runs=1)
    assert (side_by_side.pipeline.workers, side_by_side.threads) == (2, 1)
    assert (serial.pipeline.workers, serial.threads) == (1, 2)
    got = side_by_side.extract(text).document
    want = serial.extract(text).document
    assert len(want.entities) > 30 and len(want.relations) > 5
    assert got.entities == want.entities
    assert got.relations == want.relations
    # Given entities take the same path.
    given = read_corpus(corpus_dir / "train_part_2")[3]
    entities = [e for e in given.entities if e.end <= 8000]
    assert side_by_side.relations_for(text, entities).document.relations == (
        serial.relations_for(text, entities).document.relations
    )


@pytest.mark.parametrize("runs", [1, 3])
def test_a_request_keeps_that_many_batches_in_flight(corpus_dir: Path, runs: int) -> None:
    ex = extractor(threads=3, encoder_runs=runs)
    tagger = ex.pipeline.ner
    lock = threading.Lock()
    now = most = 0

    def counted(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal now, most
        with lock:
            now += 1
            most = max(most, now)
        try:
            time.sleep(0.01)  # long enough for the other batches to start
            return tagger.run(ids, mask)
        finally:
            with lock:
                now -= 1

    ex.pipeline.ner = replace(tagger, run=counted)
    found = ex.extract(read_corpus(corpus_dir / "train_part_1")[0].text[:6000], relations=False).document
    assert found.entities
    assert most == runs


def test_the_defaults_give_each_core_a_run() -> None:
    ex = extractor(threads=4)
    assert (ex.encoder_runs, ex.threads, ex.pipeline.workers) == (4, 1, 4)
