"""The drain: a phase of the stop sequence in which the server still serves every request but tells load
balancers it is leaving, so that they stop sending it new ones before it stops accepting connections.

`renersans drain` (app/cli/serve.py) finds the local server through its run file and sends it SIGUSR1;
the server (app/server.py) then starts the drain here: `/ready` answers 503 "draining", every answer
carries `Connection: close` (a client on a kept-alive connection reconnects, and the load balancer sends
the new connection to another replica), and `RENERSANS_DRAIN_DELAY_S` seconds later the usual graceful
shutdown runs. A SIGTERM during the delay waits for its end. docs/reliability.md has the whole sequence.

A signal rather than an HTTP endpoint: behind a reverse proxy or a service-mesh sidecar in the same pod,
every client arrives from 127.0.0.1, so "loopback only" would let anyone stop a replica.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RenersansError


class Drain:
    """Whether this process drains, since when, and for how long (monotonic seconds). One per process:
    the signal handler starts it, /ready and the server's loop read it."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.delay_s = 0.0

    def start(self, delay_s: float) -> bool:
        """Start draining for `delay_s` seconds; False (and the first delay kept) if already draining."""
        if self.started_at is not None:
            return False
        self.delay_s, self.started_at = delay_s, time.monotonic()
        return True

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def over(self) -> bool:
        """The delay has passed: time for the graceful shutdown."""
        return self.started_at is not None and time.monotonic() >= self.started_at + self.delay_s


STATE = Drain()


class CloseWhileDraining:
    """ASGI middleware: while draining, every answer closes its connection, so that kept-alive clients
    reconnect through the load balancer (which no longer sends new connections here) instead of meeting
    the close of an idle connection at shutdown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and STATE.draining:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


# ---- the run file: how `renersans drain` finds the server ------------------------------------------------


@dataclass(frozen=True)
class RunFile:
    """What `renersans serve` writes for `renersans drain`: its process id and its drain delay (so that
    the hook waits as long as the server drains, whatever its own environment says)."""

    pid: int
    drain_delay_s: float


def run_file_path(port: int) -> Path:
    """The default run file of the server on `port`: in the temporary directory (writable also on a
    read-only root filesystem, where /tmp is a volume), one per port."""
    return Path(tempfile.gettempdir()) / f"renersans-{port}.json"


def write_run_file(path: Path, drain_delay_s: float) -> None:
    path.write_text(json.dumps({"pid": os.getpid(), "drain_delay_s": drain_delay_s}), encoding="utf-8")


def remove_run_file(path: Path) -> None:
    """Removed at exit, unless another server has written it since."""
    try:
        if read_run_file(path).pid == os.getpid():
            path.unlink()
    except (OSError, RenersansError):
        pass


def read_run_file(path: Path) -> RunFile:
    """The server's run file; RenersansError naming the file and what to do when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunFile(int(data["pid"]), float(data["drain_delay_s"]))
    except FileNotFoundError:
        raise RenersansError(
            f"no server to drain: {path} does not exist; is `renersans serve` running here with "
            "--workers 1, on the port given (--port), with the same TMPDIR?"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RenersansError(f"{path} is not a renersans run file ({exc}); pass --run-file") from None


def signal_drain(path: Path) -> RunFile:
    """Send the server of run file `path` the drain signal (SIGUSR1); RenersansError if it is not running."""
    run = read_run_file(path)
    cmdline = Path(f"/proc/{run.pid}/cmdline")
    try:
        # A stale file's pid may have been reused: signal only a `serve` (where /proc tells).
        if cmdline.parent.exists() and b"serve" not in cmdline.read_bytes():
            raise ProcessLookupError
        os.kill(run.pid, signal.SIGUSR1)
    except (ProcessLookupError, FileNotFoundError):
        raise RenersansError(
            f"no server to drain: process {run.pid} of {path} is not a running `renersans serve`"
        ) from None
    return run


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
