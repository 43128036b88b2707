"""Reliability and access without a server: the concurrency gate, the API key's comparison, the limits'
defaults and damaged zips, each called in this process. The same guarantees as a client meets them, through
real `renersans serve` processes: tests/test_server_reliability.py (docs/reliability.md has the table).
"""

from __future__ import annotations

import hmac
import io
import os
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import wait_for, zip_of

from app import access, errors, limits
from app.service import Extractor
from app.settings import Settings
from app.text.brat import format_ann
from app.uploads import annotate_zip

KEY = "s3cret-ключ"  # non-ASCII on purpose: clients send it as UTF-8


@pytest.fixture(scope="module")
def extractor(tiny_bundle: Path) -> Extractor:
    return Extractor(Settings(_env_file=None, bundle=tiny_bundle))


def annotated_as_brat(extractor: Extractor) -> Callable[[str], str]:
    def annotate(text: str) -> str:
        doc = extractor.extract(text).document
        return format_ann(doc.entities, doc.relations)

    return annotate


def test_damaged_zips_are_refused_never_crash(extractor: Extractor) -> None:
    """Any few bytes of a valid zip overwritten: a 400 naming the problem, or (when the damage missed)
    a zip of .ann files; never another exception (zipfile raises a dozen kinds for malformed archives)."""
    base = zip_of({"a.txt": "Рост доходов населения. ".encode() * 20, "b/c.txt": "Снижение".encode()})
    outcomes = {"refused": 0, "annotated": 0}

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=6))
    def damaged(edits: list[tuple[int, int]]) -> None:
        data = bytearray(base)
        for at, value in edits:
            data[at] = value
        try:
            archive = annotate_zip(bytes(data), 1_000_000, annotated_as_brat(extractor))
        except errors.InputError as exc:
            assert str(exc)
            outcomes["refused"] += 1
        else:
            zipfile.ZipFile(io.BytesIO(archive)).testzip()
            outcomes["annotated"] += 1

    damaged()
    assert outcomes["refused"] > 0, outcomes


def test_gate_serves_in_order_refuses_beyond_the_queue_and_times_out() -> None:
    """The concurrency gate itself, with threads as the service uses it: one slot, two places in line."""
    gate = limits.Gate(1, 2)
    order: list[str] = []
    release = threading.Event()

    def call(name: str, deadline: float = float("inf")) -> None:
        limits.DEADLINE.set(deadline)
        try:
            with gate.slot():
                order.append(name)
                release.wait(10)
        except (errors.Overloaded, errors.ProcessingTimeout) as exc:
            order.append(f"{name}: {type(exc).__name__}")

    first = threading.Thread(target=call, args=("first",))
    first.start()
    wait_for(lambda: gate.running == 1, what="the first call to run")
    line = [threading.Thread(target=call, args=(n,)) for n in ("second", "third")]
    for place, t in enumerate(line, start=1):
        t.start()
        wait_for(lambda place=place: gate.waiting == place, what="the line to form")
    call("fourth")  # the line is full: refused at once, in this thread
    assert order == ["first", "fourth: Overloaded"]
    release.set()
    for t in [first, *line]:
        t.join(10)
    assert order[2:] == ["second", "third"], "served in order of arrival"
    release.clear()
    holder = threading.Thread(target=call, args=("holder",))
    holder.start()
    wait_for(lambda: gate.running == 1, what="the slot to be taken")
    started = time.monotonic()
    call("late", deadline=time.monotonic() + 0.3)  # waits for the slot only until its deadline
    assert order[-1] == "late: ProcessingTimeout" and 0.25 < time.monotonic() - started < 2
    release.set()
    holder.join(10)
    assert (gate.running, gate.waiting) == (0, 0)


@pytest.mark.parametrize(
    ("waiting", "hold_s", "slots", "most_s", "expected"),
    [
        (32, 2.0, 4, 120, 16),  # the default queue, full, at 2 s a call: 8 rounds of the 4 slots
        (3, 1.5, 2, 120, 3),  # 2.25 s, rounded up: HTTP's Retry-After is whole seconds
        (32, 0.01, 4, 120, 1),  # fast calls: never 0, which would invite an immediate retry
        (0, 5.0, 4, 120, 1),  # no queue (RENERSANS_MAX_QUEUE=0): at least a second
        (32, 60.0, 4, 120, 120),  # long documents: never past the request timeout, when the queue is gone
        (32, 60.0, 4, 2.5, 3),
    ],
)
def test_retry_after_is_the_queue_at_the_recent_time_per_call(
    waiting: int, hold_s: float, slots: int, most_s: float, expected: int
) -> None:
    assert limits.retry_after_s(waiting, hold_s, slots, most_s) == expected


def test_gate_refusal_says_when_the_queue_will_have_gone() -> None:
    """Known hold times fed to the gate's mean (no timing here): a refusal's Retry-After is the line ahead
    at that mean, divided by the slots; the mean follows recent calls."""
    mean = limits.MeanTime()
    assert mean.seconds == 1.0, "before any call: a second, as before there was an estimate"
    for seconds, expected in [(4.0, 4.0), (2.0, 3.6), (2.0, 3.28)]:
        mean.add(seconds)
        assert mean.seconds == pytest.approx(expected)

    gate = limits.Gate(1, 2, most_wait_s=120)
    gate.hold.add(3.0)
    release = threading.Event()

    def hold() -> None:
        with gate.slot():
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    threads[0].start()
    wait_for(lambda: gate.running == 1, what="the slot to be taken")
    for place, t in enumerate(threads[1:], start=1):
        t.start()
        wait_for(lambda place=place: gate.waiting == place, what="the line to form")
    with pytest.raises(errors.Overloaded) as refused, gate.slot():
        pass
    answer = refused.value.answer()
    assert answer.status == 503 and answer.headers["Retry-After"] == "6"  # 2 waiting x 3 s / 1 slot
    assert "retry after 6 s" in str(refused.value)
    release.set()
    for t in threads:
        t.join(10)
    assert gate.hold.count == 4 and (gate.running, gate.waiting) == (0, 0)


@pytest.mark.parametrize(
    ("sent", "matches"),
    [(KEY, True), (KEY.encode().decode("latin-1"), True), (None, False), ("", False), (KEY[:-1], False)],
)
def test_key_comparison(sent: str | None, matches: bool) -> None:
    """`KEY.encode().decode('latin-1')` is how Starlette hands over the UTF-8 bytes a client sent."""
    assert access.key_matches(sent, KEY) is matches


def test_key_comparison_is_one_compare_digest_of_fixed_length_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What keeps the comparison's time from telling anything about the key, checked rather than timed
    (timings on a shared machine are noise, and the project's tests assert none): whatever is sent, short,
    long, partly or wholly right, `key_matches` makes exactly one `hmac.compare_digest` call, on two 32-byte
    digests."""
    calls = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare(a, b)

    compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", spy)
    for sent in ("x", KEY[:-1], KEY, KEY * 1000):
        access.key_matches(sent, KEY)
    assert calls == [(32, 32)] * 4


def test_limits_have_safe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("RENERSANS_")]:
        monkeypatch.delenv(name)
    s = Settings(_env_file=None)
    assert 0 < s.max_request_bytes <= 10_000_000
    assert 0 < s.read_timeout_s <= 60 and 0 < s.request_timeout_s <= 600
    assert 1 <= s.max_concurrency <= 64 and 0 <= s.max_queue <= 1024
    # Room for every model request and its queue, under a common limit of 1,024 descriptors.
    assert s.max_concurrency + s.max_queue < s.max_connections <= 1000
    assert s.fault_injection is False and s.api_key == "" and s.cors_origins == []
