"""A real `renersans serve` on 127.0.0.1, as the tests and the benchmarks start it, and the loop their
clients send requests in.

The tests import this module too (pytest's pythonpath holds the repository's root): the benchmarks run
without pytest, so the harness lives here rather than in tests/. The server is the command users run, with
its connection guard, keep-alive and shutdown, not the application alone:

    with serve(bundle, "--grace", "5", RENERSANS_MAX_QUEUE="64") as server:
        httpx.post(f"{server.url}/extract", json={"text": "..."})
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
K = TypeVar("K", bound=Hashable)


class ServerError(RuntimeError):
    """The server exited, or did not get where it was awaited, in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A `renersans serve` process: its base URL, the process, and the file its log goes to."""

    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60) -> httpx.Response:
        """The first 200 of /ready; ServerError if the server exits or is not ready within `timeout` s."""
        return self._poll_ready(timeout, lambda r: r.status_code == 200, "become ready")

    def wait_started(self, timeout: float = 60) -> httpx.Response:
        """The first answer of /ready once the bundle has been tried (200, or 503 for another reason than
        'starting'), for servers that stay up without a usable bundle."""
        return self._poll_ready(
            timeout, lambda r: r.status_code == 200 or r.json()["reason"] != "starting", "start"
        )

    def stop(self, timeout: float = 60) -> str:
        """SIGTERM, as an orchestrator stops it (in-flight requests get its grace period); SIGKILL after
        `timeout` s. Returns its log."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        return self.output()

    def drain(self, *args: str) -> subprocess.Popen:
        """`renersans drain` for this server (extra `args`, e.g. "--no-wait"), as a Kubernetes preStop hook
        runs it beside the server; started, not awaited. Its output goes to a pipe: it prints one line."""
        port = str(urlsplit(self.url).port)
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "drain", "--port", port, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def _poll_ready(
        self, timeout: float, done: Callable[[httpx.Response], bool], what: str
    ) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"the server exited with {self.process.returncode}: {self.output()[-2000:]}"
                )
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                if done(r):
                    return r
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise ServerError(f"the server did not {what} in {timeout:g} s: {self.output()[-2000:]}")


def start(bundle: Path, *args: str, cwd: Path | None = None, log: Path | None = None, **env: str) -> Server:
    """`renersans serve --bundle BUNDLE` with extra `args` (e.g. "--grace", "3") on a free port, with the
    RENERSANS_* settings in `env` and none of the caller's but its cache of derived variants (so that a
    variant derived once serves every server). The log goes to `log` (default: a new temporary file),
    never to a pipe, which nobody reads and which would fill and block the server. Returns at once."""
    port = free_port()
    kept = {
        k: v for k, v in os.environ.items() if not k.startswith("RENERSANS_") or k == "RENERSANS_CACHE_DIR"
    }
    if log is None:
        handle, name = tempfile.mkstemp(prefix="renersans-serve-", suffix=".log")
        os.close(handle)
        log = Path(name)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--bundle", str(bundle), *args],
            env={**kept, **env},
            cwd=cwd or ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


@contextmanager
def serve(
    bundle: Path,
    *args: str,
    cwd: Path | None = None,
    log: Path | None = None,
    ready_s: float = 60,
    **env: str,
) -> Iterator[Server]:
    """`start`, then wait up to `ready_s` seconds for /ready; the server is stopped on the way out."""
    server = start(bundle, *args, cwd=cwd, log=log, **env)
    try:
        server.wait_ready(ready_s)
        yield server
    finally:
        server.stop()


@dataclass
class Budget:
    """Requests that several clients may still send between them."""

    left: int

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


async def back_to_back(
    send: Callable[[], Awaitable[K | None]],
    until: float,
    seconds: dict[K, list[float]],
    budget: Budget | None = None,
) -> None:
    """One client: await `send()` again and again until `time.monotonic()` reaches `until` (or `budget` is
    spent), adding each call's seconds to `seconds[what it returned]`. A call that returns None is not
    timed: it failed, and `send` counted the failure. Several clients are several of these, gathered."""
    while time.monotonic() < until and (budget is None or budget.take()):
        started = time.monotonic()
        key = await send()
        if key is not None:
            seconds.setdefault(key, []).append(time.monotonic() - started)
