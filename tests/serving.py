"""The service as the tests meet it: the shared test server's settings, a raw-socket client for what an
HTTP library will not send (a body that stalls, a head that trickles in, 10 MB nobody reads), and the small
helpers the reliability tests share. Servers are started by the one harness, bench/server.py."""

from __future__ import annotations

import io
import json
import select
import socket
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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
