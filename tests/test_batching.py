"""The cross-request batcher: each caller gets its own rows' results, batches are shared and bounded, a lone
caller waits no longer than the configured wait, and one caller's failure stays its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.batching import BatchingRunner

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


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_service_with_batching_extracts_as_without(tiny_bundle: Path, variant: str) -> None:
    """The service with cross-request batching answers as without. An int8 model's answer depends on its
    batch mates, so the batching leaves such a model out and only fp32's encoders are shared."""
    from app.service import Extractor
    from app.settings import Settings

    text = "Рост валового регионального продукта в 2019 году составил 3,5 %.\nОбъём инвестиций уменьшился."
    plain = Extractor(Settings(bundle=tiny_bundle, variant=variant))
    batched = Extractor(Settings(bundle=tiny_bundle, variant=variant, batch_wait_ms=5, batch_max_rows=8))
    try:
        taggers = (batched.pipeline.ner, batched.pipeline.re)
        assert all(t.batch_dependent == (variant == "int8") for t in taggers)
        assert len(batched.batchers) == (0 if variant == "int8" else len(plain.manifest["models"]))
        want = plain.extract(text).document
        got = batched.extract(text).document
        assert [(e.type, e.start, e.end) for e in got.entities] == [
            (e.type, e.start, e.end) for e in want.entities
        ]
        assert [(r.type, r.arg1, r.arg2) for r in got.relations] == [
            (r.type, r.arg1, r.arg2) for r in want.relations
        ]
    finally:
        batched.close()


def test_io_binding_gives_the_plain_runs_logits(tiny_bundle: Path) -> None:
    from app.bundle import choose, onnx_tagger, read_manifest

    manifest = read_manifest(tiny_bundle)
    choice = choose(manifest, "ner", "fp32", "cpu")
    plain = onnx_tagger(tiny_bundle, manifest, "ner", choice, io_binding=False)
    bound = onnx_tagger(tiny_bundle, manifest, "ner", choice, io_binding=True)
    ids, mask = padded_batch(np.random.default_rng(3), 3)
    ids = np.minimum(ids, 100)  # inside the tiny vocabulary
    np.testing.assert_allclose(bound.run(ids, mask)["entity"], plain.run(ids, mask)["entity"], atol=1e-6)
