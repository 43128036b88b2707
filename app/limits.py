"""The limits a request meets on its way to the models: size, time to send, concurrency, time to answer.

Each is a setting (app/settings.py) with a safe default, and each refusal is an error of app/errors.py,
answered as JSON like every other error (docs/reliability.md has the whole table):

- `Limits`, ASGI middleware, reads the whole body before the application sees it. A declared Content-Length
  over `max_request_bytes` is refused at once, before any of the body is read (413), a chunked body as soon
  as it passes the limit (what is still arriving is then dropped for a moment, so that the client can read
  the 413 rather than a reset connection); a body not received within `read_timeout_s` gets 408. A request
  not answered within `request_timeout_s` of its arrival gets 504; work already running on the models
  cannot be interrupted (ONNX Runtime has no cancel), so it finishes in the background, still holding its
  slot so that the load stays bounded, and its result is dropped.
- `Gate`, around each call of the models (app/deps.py's `run`, in the request's worker thread): at most
  `max_concurrency` at once, at most `max_queue` more waiting (503 Overloaded beyond, its Retry-After the
  time the slots need for the queue at the recent time per call), none waiting past the request's deadline
  (504). Only requests that passed every check wait: a bad one is refused at once, however busy the models
  are, and a slow uploader holds no slot.
- `GuardedH11Protocol`, uvicorn's HTTP/1.1 protocol with a deadline for each request's head: uvicorn times
  out idle keep-alive connections only, so without it a client that trickles header bytes (slow loris), or
  connects and sends nothing, holds a connection for ever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from http import HTTPStatus

import h11
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.access import cors_options
from app.errors import (
    Overloaded,
    PayloadTooLarge,
    ProcessingTimeout,
    ReadTimeout,
    RenersansError,
    ShuttingDown,
)
from app.settings import Settings

log = logging.getLogger(__name__)
# After a 413, what is still arriving is read and dropped for this long, up to this much (see below).
LINGER_S = 2.0
LINGER_BYTES = 16 * 2**20


# The monotonic time by which the current request must be answered; set by Limits, read by Gate.
DEADLINE: ContextVar[float] = ContextVar("renersans_deadline", default=float("inf"))


def retry_after_s(waiting: int, hold_s: float, slots: int, most_s: float) -> int:
    """Whole seconds a refused client should wait before retrying (HTTP's Retry-After): the time `slots`
    model slots take to work through the `waiting` requests at `hold_s` seconds each. At least 1; at most
    `most_s` (the request timeout: by then every request now waiting has been answered or timed out)."""
    return max(1, min(math.ceil(waiting * hold_s / slots), math.ceil(most_s)))


class MeanTime:
    """An exponentially weighted mean of durations in seconds: recent calls weigh most (`weight` for the
    newest), so the estimate follows a change of load or of document length within a few calls. Before
    the first call it is `initial`."""

    def __init__(self, initial: float = 1.0, weight: float = 0.2) -> None:
        self.seconds, self.weight, self.count = initial, weight, 0

    def add(self, seconds: float) -> None:
        self.seconds = seconds if self.count == 0 else self.seconds + self.weight * (seconds - self.seconds)
        self.count += 1


class Gate:
    """At most `slots` model calls at once, and at most `queue` more waiting for a slot, served in order of
    arrival. Used from worker threads (the models run there), so it is a threading primitive. A refusal's
    Retry-After is estimated from the time recent calls held their slot, at most `most_wait_s`."""

    def __init__(self, slots: int, queue: int, most_wait_s: float = 120.0) -> None:
        self.slots, self.queue, self.most_wait_s = slots, queue, most_wait_s
        self.running = 0
        self.hold = MeanTime()
        self._line: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        return len(self._line)

    def retry_after_s(self) -> int:
        """The Retry-After of a refusal now (whole seconds)."""
        return retry_after_s(self.waiting, self.hold.seconds, self.slots, self.most_wait_s)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._changed:
            if self.running >= self.slots and self.waiting >= self.queue:
                wait = self.retry_after_s()
                raise Overloaded(
                    f"the service is at capacity ({self.running} requests running, {self.waiting} waiting); "
                    f"retry after {wait} s",
                    retry_after_s=wait,
                )
            ticket = object()
            self._line.append(ticket)
            try:
                deadline = DEADLINE.get()  # infinite outside a request (no Limits middleware)
                timeout = max(0.0, deadline - time.monotonic()) if deadline != float("inf") else None
                if not self._changed.wait_for(
                    lambda: self.running < self.slots and self._line[0] is ticket, timeout=timeout
                ):
                    raise ProcessingTimeout(
                        "not answered in time: timed out waiting for a free model slot; "
                        "retry when the service is less busy"
                    )
                self.running += 1
            finally:
                self._line.remove(ticket)
                self._changed.notify_all()  # the next in line may go now
        started = time.monotonic()
        try:
            yield
        finally:
            with self._changed:
                self.running -= 1
                self.hold.add(time.monotonic() - started)
                self._changed.notify_all()


class Limits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        read_timeout_s: float,
        request_timeout_s: float,
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.read_timeout_s, self.request_timeout_s = read_timeout_s, request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reply = _Reply(send)
        try:
            await self._limited(scope, receive, reply)
        except asyncio.CancelledError:  # the server is stopping and its grace period is over
            if reply.started:
                raise
            # Answer rather than let uvicorn send a bare 500: the client may retry on another replica.
            reply.abandoned = True
            await send_error(send, ShuttingDown("the service stopped before answering; retry"), close=True)

    async def _limited(self, scope: Scope, receive: Receive, reply: _Reply) -> None:
        deadline = time.monotonic() + self.request_timeout_s
        DEADLINE.set(deadline)  # copied into the application's task, and from there into its worker thread
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse_too_large(receive, reply)
            return
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            error = ReadTimeout(
                f"the request body did not arrive within {self.read_timeout_s:g} s; send it in one go"
            )
            await send_error(reply, error, close=True)
            return
        except PayloadTooLarge:
            await self._refuse_too_large(receive, reply)
            return
        except _Disconnected:
            return
        task = asyncio.create_task(self.app(scope, _replay(body, receive), reply))
        try:
            # A moment past the deadline, so that a request timed out inside (by Gate) says where.
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()) + 0.25)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            task.result()  # the application's own exception, if any, as if it had been called directly
        elif reply.started:
            await task  # the answer is already on its way: let it finish
        else:
            reply.abandoned = True
            task.add_done_callback(_finished_late)
            await send_error(reply.send, self._timed_out())

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse_too_large(self, receive: Receive, send: Send) -> None:
        """413 at once, then read and drop what the client is still sending, for a moment ("lingering
        close"): a socket closed with unread data resets the connection, and most clients then report the
        reset instead of the answer they were sent."""
        await send_error(send, self._too_large(), close=True, more_body=True)
        drained = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while drained < LINGER_BYTES:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
                    drained += len(message.get("body", b""))
        await send({"type": "http.response.body", "body": b""})

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is over {self.max_bytes:,} bytes; split the document")

    def _timed_out(self) -> ProcessingTimeout:
        return ProcessingTimeout(
            f"not answered within {self.request_timeout_s:g} s; split long documents, or retry when the "
            "service is less busy"
        )


async def send_error(send: Send, error: RenersansError, close: bool = False, more_body: bool = False) -> None:
    """`error` answered from in front of the application, as the application answers it (its status, its
    headers and its JSON body: errors.error_answer)."""
    answer = error.answer()
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    if close:  # the rest of the request was not read: the connection cannot carry another one
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": more_body})


class _Disconnected(Exception):
    pass


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the real channel (which reports the client's disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Reply:
    """The application's `send`, until the request is answered for it (504): later messages are dropped."""

    def __init__(self, send: Send) -> None:
        self.send, self.started, self.abandoned = send, False, False

    async def __call__(self, message: Message) -> None:
        if self.abandoned:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


def _finished_late(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a request answered 504 failed later", exc_info=task.exception())


@functools.cache
def _server_settings() -> Settings:
    # uvicorn builds the protocol itself, with its own configuration only: its settings come from the same
    # environment as the application's, read once per process.
    return Settings()


def head_timeout_s() -> float:
    return _server_settings().read_timeout_s


def _head_timeout_response() -> bytes:
    # Written to the socket directly: h11 can send no response before a request's head is complete.
    answer = ReadTimeout("the request line and headers took too long to arrive").answer()
    head = [
        f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
        *(f"{name}: {value}" for name, value in answer.headers.items()),
        "connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: a request's head (request line and headers) must arrive within
    `read_timeout_s` of the connection or of its first byte, else the connection is closed (with a 408 when
    part of a head had arrived); and past `limit_concurrency` open connections (or requests in progress)
    the answer is the service's JSON 503 `Overloaded`, not uvicorn's plain text."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        # uvicorn's own check at the limit answers in plain text: turned off here, and the same check made
        # in front of the application instead.
        limit, self.limit_concurrency = self.limit_concurrency, None
        if limit is not None:
            self.app = self._limited(self.app, limit)

    def _limited(self, app: ASGIApp, limit: int) -> ASGIApp:
        refuse: ASGIApp = self._refuse
        origins = _server_settings().cors_origins
        if origins:
            # The application's CORS middleware is behind this check: without its headers a browser client
            # could not read the refusal, nor its Retry-After.
            refuse = CORSMiddleware(refuse, **cors_options(origins))

        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            # This request's own task is already counted among the tasks; uvicorn counts before adding it.
            if len(self.connections) >= limit or len(self.tasks) - 1 >= limit:
                await refuse(scope, receive, send)
            else:
                await app(scope, receive, send)

        return limited

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("refused a request from %s: %d connections open", self.client, len(self.connections))
        error = Overloaded(
            f"{len(self.connections)} connections are open, the most this server takes "
            "(RENERSANS_MAX_CONNECTIONS): retry later"
        )
        await send_error(send, error, close=True)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()  # part of a pipelined head is already waiting

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(head_timeout_s(), self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            log.warning(
                "closed a connection from %s: its request head took over %g s", self.client, head_timeout_s()
            )
            self.transport.write(_head_timeout_response())
        self.transport.close()
