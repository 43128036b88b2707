"""The cross-request batcher: each caller gets its own rows' results, batches are shared and bounded, a lone
caller waits no longer than the configured wait, and one caller's failure stays its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.batching import BatchingRunner
from app.text.brat import read_corpus

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"

LABELS = 3


class FakeEncoder:
    """Logits that depend on each row alone (piece id times label), recording every batch it is given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.shapes.append(ids.shape)
        if (ids < 0).any():
            raise ValueError("negative piece id")
        time.sleep(self.delay)
        logits = (ids * mask)[:, :, None].astype(np.float32) * np.arange(1, LABELS + 1, dtype=np.float32)
        return {"entity": logits}


def padded_batch(rng: np.random.Generator, rows: int, pad_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(1, 20, size=rows)
    ids = np.full((rows, lengths.max()), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(5, 1000, size=n)
        mask[r, :n] = 1
    return ids, mask


def test_concurrent_callers_get_their_own_rows_in_shared_batches() -> None:
    encoder = FakeEncoder(delay=0.01)
    batcher = BatchingRunner(encoder, max_rows=16, max_wait_ms=100)
    callers = 12
    barrier = threading.Barrier(callers)
    results: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
    errors: list[BaseException] = []

    def call(k: int) -> None:
        try:
            rng = np.random.default_rng(k)
            for _ in range(3):
                ids, mask = padded_batch(rng, int(rng.integers(1, 6)))
                barrier.wait(timeout=10)
                out = batcher(ids, mask)
                expected = encoder(ids, mask)["entity"]
                valid = mask.astype(bool)
                np.testing.assert_array_equal(out["entity"][valid], expected[valid])
                assert out["entity"].shape == (*ids.shape, LABELS)
                results[k] = (ids, mask, out)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert not errors, errors[0]
    assert len(results) == callers
    assert batcher.shared_calls > 0, "concurrent callers were never merged"
    assert all(rows <= 16 for rows, _ in encoder.shapes)


def test_a_lone_caller_waits_at_most_the_configured_wait() -> None:
    encoder = FakeEncoder()
    batcher = BatchingRunner(encoder, max_rows=64, max_wait_ms=50)
    ids, mask = padded_batch(np.random.default_rng(0), 2)
    batcher(ids, mask)  # the worker thread is up
    started = time.perf_counter()
    batcher(ids, mask)
    waited = time.perf_counter() - started
    batcher.close()
    assert 0.04 <= waited < 1.0


def test_a_full_batch_does_not_wait() -> None:
    encoder = FakeEncoder()
    batcher = BatchingRunner(encoder, max_rows=4, max_wait_ms=5000)
    ids, mask = padded_batch(np.random.default_rng(0), 4)
    started = time.perf_counter()
    batcher(ids, mask)
    assert time.perf_counter() - started < 1.0
    batcher.close()


def test_one_callers_failure_is_its_own() -> None:
    encoder = FakeEncoder()
    batcher = BatchingRunner(encoder, max_rows=64, max_wait_ms=200)
    rng = np.random.default_rng(1)
    good, bad = padded_batch(rng, 3), padded_batch(rng, 2)
    bad[0][0, 0] = -1
    outcome: dict[str, object] = {}

    def call(name: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
        try:
            outcome[name] = batcher(*batch)
        except ValueError as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=call, args=x) for x in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert isinstance(outcome["bad"], ValueError)
    assert isinstance(outcome["good"], dict)
    # The batcher still serves after a failure.
    assert batcher(*good)["entity"].shape == (*good[0].shape, LABELS)
    batcher.close()


def test_closed_batcher_refuses_and_settings_are_checked() -> None:
    batcher = BatchingRunner(FakeEncoder(), max_wait_ms=0)
    batcher.close()
    ids, mask = padded_batch(np.random.default_rng(2), 1)
    with pytest.raises(RuntimeError, match="closed"):
        batcher(ids, mask)
    with pytest.raises(ValueError):
        BatchingRunner(FakeEncoder(), max_rows=0)


@pytest.fixture(scope="module")
def paragraph(corpus_dir: Path) -> str:
    """The opening lines of a corpus document (538 characters), in which models/default finds entities and
    relations."""
    return read_corpus(corpus_dir / "train_part_2")[1].text[:600].rsplit("\n", 1)[0]


# variant -> the models whose encoders cross-request batching shares. Dynamic int8 scales each product's
# input by the range of the whole batch, so an int8 model's answer would depend on its batch mates: the
# service makes no batcher for it, and with batching configured its answer is the unbatched path's.
SHARED = {"fp16": ["ner", "re"], "int8": [], "auto": []}


@pytest.mark.parametrize("variant", SHARED)  # auto: the CPU default, both models int8
def test_service_with_batching_extracts_as_without(paragraph: str, variant: str) -> None:
    """models/default with cross-request batching configured gives the answer it gives without, entities and
    relations, where the encoders are shared (fp16) and where a model is left out (int8: no batcher is made,
    so its answer is the unbatched path's by construction; the test holds the service to that)."""
    if not (DEFAULT / "manifest.json").exists():
        pytest.skip("models/default has not been exported yet")
    from app.service import Extractor
    from app.settings import Settings

    settings = Settings(_env_file=None, bundle=DEFAULT, variant=variant, device="cpu")
    plain = Extractor(settings)
    batched = Extractor(settings.model_copy(update={"batch_wait_ms": 5, "batch_max_rows": 8}))
    try:
        assert plain.batchers == []
        shared = [name for name in ("ner", "re") if not getattr(batched.pipeline, name).batch_dependent]
        assert shared == SHARED[variant] and len(batched.batchers) == len(shared)
        want = plain.extract(paragraph).document
        got = batched.extract(paragraph).document
        assert len(want.entities) > 0 and len(want.relations) > 0, "the paragraph should find both"
        assert [(e.type, e.start, e.end) for e in got.entities] == [
            (e.type, e.start, e.end) for e in want.entities
        ]
        assert [(r.type, r.arg1, r.arg2) for r in got.relations] == [
            (r.type, r.arg1, r.arg2) for r in want.relations
        ]
    finally:
        batched.close()


def test_io_binding_gives_the_plain_runs_logits(tiny_bundle: Path) -> None:
    from app.bundle import choose, onnx_tagger
    from app.manifest import read_manifest

    manifest = read_manifest(tiny_bundle)
    choice = choose(manifest, "ner", "fp32", "cpu")
    plain = onnx_tagger(tiny_bundle, manifest, "ner", choice, io_binding=False)
    bound = onnx_tagger(tiny_bundle, manifest, "ner", choice, io_binding=True)
    ids, mask = padded_batch(np.random.default_rng(3), 3)
    ids = np.minimum(ids, 100)  # inside the tiny vocabulary
    np.testing.assert_allclose(bound.run(ids, mask)["entity"], plain.run(ids, mask)["entity"], atol=1e-6)
