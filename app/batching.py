"""Cross-request batching: rows of concurrent callers of one model merged into shared encoder batches.

Under many small requests each pipeline call hands the encoder a batch of a row or two, and a GPU idles
between tiny kernels. `BatchingRunner` wraps a `Runner`: callers hand in their padded batch and block; one
worker thread takes what is waiting (up to `max_rows` rows, waiting at most `max_wait_ms` after the oldest
caller arrived for more to come), sorts all rows by length, runs them in padded batches of at most
`max_rows` rows and `max_tokens` padded pieces, and hands each caller its own rows back.

Caveats (BENCHMARKS.md): on a CPU it measured slower (a bigger batch is not faster per piece there, and a
lone caller pays the wait on every encoder call); with int8 models a row's logits depend on its batch mates
(dynamic quantization scales activations per batch). The model runs in the worker thread, so the callers'
context variables (the test-only faults of app/faults.py) do not reach it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from app import faults
from app.pipeline import Runner

log = logging.getLogger(__name__)


@dataclass
class _Job:
    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    arrived: float
    remaining: int
    out: dict[str, np.ndarray] = field(default_factory=dict)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _lengths(mask: np.ndarray) -> np.ndarray:
    """Length of each row up to its last unmasked piece (rows are right-padded; an empty row has 0)."""
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], dtype=np.int64)
    valid = mask != 0
    last = mask.shape[1] - np.argmax(valid[:, ::-1], axis=1)
    return np.where(valid.any(axis=1), last, 0)


class BatchingRunner:
    """A `Runner` that merges the rows of concurrent callers into shared batches (see the module doc).

    Logits at a caller's padded positions are zeros (callers read only their valid positions)."""

    def __init__(
        self,
        run: Runner,
        max_rows: int = 64,
        max_wait_ms: float = 2.0,
        max_tokens: int = 16384,
        pad_id: int = 1,
        name: str = "encoder",
    ) -> None:
        if max_rows < 1 or max_wait_ms < 0 or max_tokens < 1:
            raise ValueError("max_rows and max_tokens must be positive and max_wait_ms not negative")
        self.run = run
        self.max_rows = max_rows
        self.max_wait = max_wait_ms / 1000
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Counters for tests and reports: encoder calls made, and calls that held rows of several callers.
        self.calls = 0
        self.shared_calls = 0
        self._worker = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        if len(ids) == 0:
            return self.run(ids, mask)
        # A fault injected for this request (tests only) lives in the caller's context, which the worker
        # thread does not share: applied here, it travels with the rows into the shared batch.
        ids = faults.before_model(ids)
        job = _Job(ids, mask, _lengths(mask), time.monotonic(), remaining=len(ids))
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.out

    def close(self) -> None:
        """Stop the worker once the callers already waiting are served."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    def _take(self) -> list[_Job] | None:
        """The jobs of the next round: the oldest, plus those arriving before its wait runs out, up to
        `max_rows` rows (a single job larger than that is taken alone). None when closed and idle."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while not self._closed and sum(j.remaining for j in self._queue) < self.max_rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs = [self._queue.popleft()]
            rows = len(jobs[0].ids)
            while self._queue and rows + len(self._queue[0].ids) <= self.max_rows:
                rows += len(self._queue[0].ids)
                jobs.append(self._queue.popleft())
            return jobs

    def _serve(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._execute(jobs)
            except BaseException as exc:  # nothing may leave a caller waiting forever
                log.exception("batcher failed")
                for job in jobs:
                    job.error = job.error or exc
                    job.done.set()

    def _execute(self, jobs: list[_Job]) -> None:
        rows = [(job, r, int(job.lengths[r])) for job in jobs for r in range(len(job.ids))]
        rows.sort(key=lambda x: x[2])
        groups: list[list[tuple[_Job, int, int]]] = []
        for row in rows:
            group = groups[-1] if groups else None
            # Sorted by length, so this row sets the group's padded width.
            if group and len(group) < self.max_rows and (len(group) + 1) * max(row[2], 1) <= self.max_tokens:
                group.append(row)
            else:
                groups.append([row])
        for group in groups:
            self._run_group(group)

    def _run_group(self, group: list[tuple[_Job, int, int]]) -> None:
        width = max(max(n for _, _, n in group), 1)
        ids = np.full((len(group), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for i, (job, r, n) in enumerate(group):
            ids[i, :n] = job.ids[r, :n]
            mask[i, :n] = job.mask[r, :n]
        owners = list(dict.fromkeys(id(job) for job, _, _ in group))
        try:
            logits = self.run(ids, mask)
        except Exception as exc:
            if len(owners) > 1:
                # One caller's bad input must not fail the others: rerun each caller's rows on their own.
                for owner in owners:
                    self._run_group([row for row in group if id(row[0]) == owner])
                return
            for job, _, _ in group:
                job.error = job.error or exc
                job.done.set()
            return
        self.calls += 1
        self.shared_calls += len(owners) > 1
        for i, (job, r, n) in enumerate(group):
            for head, lg in logits.items():
                if head not in job.out:
                    job.out[head] = np.zeros((*job.ids.shape, *lg.shape[2:]), dtype=lg.dtype)
                job.out[head][r, :n] = lg[i, :n]
            job.remaining -= 1
            if job.remaining == 0:
                job.done.set()
