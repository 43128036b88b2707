"""The stop sequence a load balancer sees (app/drain.py): one replica, `renersans serve` on models/default,
stopped as Kubernetes stops a pod, while a client sends requests in a loop: the preStop hook
(`renersans drain`), then SIGTERM. Until the drain delay ends no request may fail to connect, /ready turns
503 at the drain's start while /extract still answers 200, and the process exits 0."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.drain import STATE, Drain, read_run_file, run_file_path
from app.errors import RenersansError
from bench.server import Server, serve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
DELAY_S = 3.0
TEXT = "Объём финансирования программы составит 2,5 млрд рублей."


@pytest.fixture
def server() -> Iterator[Server]:
    if not (DEFAULT / "manifest.json").exists():
        pytest.skip("models/default has not been exported yet")
    with serve(DEFAULT, "--grace", "10", ready_s=300, RENERSANS_DRAIN_DELAY_S=str(DELAY_S)) as running:
        yield running


@dataclass
class Loop:
    """A client posting to /extract back to back on one kept-alive connection pool, as a load balancer's
    traffic reaches one replica: each answer's time, status and Connection header, or the error."""

    url: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post("/extract", json={"text": TEXT})
                    self.answers.append((time.monotonic(), r.status_code, r.headers.get("connection", "")))
                except httpx.TransportError as exc:
                    self.errors.append((time.monotonic(), type(exc).__name__))
                    time.sleep(0.05)


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param([], id="preStop waits for the delay, then SIGTERM"),
        # The hook cut short (or a SIGTERM from elsewhere) during the delay: the server waits for its end.
        pytest.param(["--no-wait"], id="SIGTERM at once"),
    ],
)
def test_stop_sequence_serves_until_the_drain_delay_ends(server: Server, hook: list[str]) -> None:
    loop = Loop(server.url)
    client = threading.Thread(target=loop.run, daemon=True)
    client.start()
    while not loop.answers and not loop.errors:
        time.sleep(0.05)
    assert loop.answers and not loop.errors, loop.errors

    started = time.monotonic()
    pre_stop = server.drain(*hook)
    # /ready turns 503 at the drain's start, while /extract is still answered (by the loop, and here).
    while (ready := httpx.get(f"{server.url}/ready", timeout=5)).status_code == 200:
        assert time.monotonic() - started < DELAY_S, "/ready still 200 at the end of the drain delay"
        time.sleep(0.02)
    draining_seen = time.monotonic()
    assert ready.json()["reason"].startswith("draining")
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200, "alive while draining"
    during = httpx.post(f"{server.url}/extract", json={"text": TEXT}, timeout=30)
    assert during.status_code == 200 and during.headers["connection"] == "close"

    output, _ = pre_stop.communicate(timeout=DELAY_S + 30)
    assert pre_stop.returncode == 0, output
    if not hook:
        assert time.monotonic() - started >= DELAY_S, "the hook returned before the delay"
    server.process.terminate()  # the kubelet's SIGTERM, once the hook has returned
    assert server.process.wait(timeout=30) == 0, server.output()[-2000:]
    loop.stop.set()
    client.join(timeout=40)

    ended = started + DELAY_S  # the server's drain began after `started`, so it ends after this
    early = [e for e in loop.errors if e[0] < ended]
    assert not early, f"connection errors before the drain delay ended: {early}"
    drained = [a for a in loop.answers if a[0] > draining_seen]
    assert drained and all(status == 200 for _, status, _ in drained), drained
    assert all(connection == "close" for _, _, connection in drained), "kept-alive clients not moved"
    assert "drained for 3 s: graceful shutdown" in server.output()
    assert not run_file_path(int(server.url.rsplit(":", 1)[1])).exists(), "run file left behind"


def test_drain_state_starts_once_and_ends_after_its_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    state = Drain()
    assert not state.draining and not state.over()
    assert state.start(10.0) and not state.start(1.0), "a second drain signal keeps the first delay"
    clock[0] = 109.9
    assert state.draining and not state.over()
    clock[0] = 110.0
    assert state.over()
    assert not STATE.draining, "the process's own state is untouched"


def test_drain_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RenersansError, match="is `renersans serve` running here"):
        read_run_file(tmp_path / "renersans-1.json")
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RenersansError, match="not a renersans run file"):
        read_run_file(tmp_path / "bad.json")
