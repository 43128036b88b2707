"""The service as the tests meet it: a real `renersans serve` process on 127.0.0.1, a raw-socket client
for what an HTTP library will not send (a body that stalls, a head that trickles in, 10 MB nobody reads),
and the small helpers the reliability tests share."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

# The shared test server's request size limit (small, so that tests exceed it cheaply) and read timeout.
LIMIT = 300_000
READ_TIMEOUT_S = 3


@dataclass(frozen=True)
class Served:
    """A test server: its URL, its log, and the directory it runs in (`root/work`, with TMPDIR
    `root/spool`), so that tests can show it writes nothing elsewhere."""

    url: str
    root: Path
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, *args: str, cwd: Path | None = None, **env: str) -> tuple[subprocess.Popen, str]:
    """`renersans serve` (extra `args`, e.g. "--grace", "3") on a free port; its log goes to a file (a pipe
    nobody reads would fill and block the server), readable with `output(proc)`."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RENERSANS_")}
    # The tests' cache of derived variants (conftest.py) is passed on: a service never writes ~/.cache.
    cache = {k: v for k, v in os.environ.items() if k == "RENERSANS_CACHE_DIR"}
    environ = {**base, **cache, "RENERSANS_BUNDLE": str(bundle), **env}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args],
        env=environ,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    proc.log_path = Path(log.name)
    return proc, f"http://127.0.0.1:{port}"


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def _poll_ready(proc: subprocess.Popen, url: str, timeout: float, done, what: str) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {output(proc)}")
        try:
            r = httpx.get(f"{url}/ready", timeout=2)
            if done(r):
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server did not {what}: {output(proc)[-2000:]}")


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60) -> httpx.Response:
    return _poll_ready(proc, url, timeout, lambda r: r.status_code == 200, "become ready")


def wait_started(proc: subprocess.Popen, url: str, timeout: float = 60) -> httpx.Response:
    """The first answer of /ready, whatever it is, once the bundle has been tried (not 'starting')."""
    return _poll_ready(
        proc, url, timeout, lambda r: r.status_code == 200 or r.json()["reason"] != "starting", "start"
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Answer:
    """What a client got: `status` None when the server closed the connection without answering."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent: int = 0  # bytes of the request the client managed to send
    seconds: float = 0.0

    def json(self) -> dict:
        return json.loads(self.body)


def send_raw(url: str, chunks: Iterable[bytes], pause_s: float = 0.0, timeout_s: float = 30) -> Answer:
    """Send `chunks` on one connection, `pause_s` apart, and stop sending as soon as the server answers or
    closes; then read the answer. The chunks are the whole request: head and body as the test writes them."""
    parts = urlsplit(url)
    started = time.monotonic()
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        for chunk in chunks:
            if select.select([sock], [], [], pause_s)[0]:
                break  # an answer (or the close) arrived before the request was complete
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        data = b""
        while True:
            try:
                block = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not block:
                break
            data += block
            if _complete(data):
                break
    seconds = time.monotonic() - started
    if not data:
        return Answer(None, sent=sent, seconds=seconds)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Answer(int(status_line.split()[1]), headers, body, sent, seconds)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def zip_of(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def wait_for(condition: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
