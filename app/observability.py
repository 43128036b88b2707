"""Logs and metrics: what an operator sees of the service."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry()
REQUESTS = Counter("renersans_requests", "HTTP requests", ["endpoint", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "renersans_request_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
STAGE = Histogram(
    "renersans_stage_seconds",
    "time per pipeline stage",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
DOCUMENTS = Counter("renersans_documents", "documents processed", ["endpoint"], registry=REGISTRY)
ENTITIES = Counter("renersans_entities", "entities returned", registry=REGISTRY)
RELATIONS = Counter("renersans_relations", "relations returned", registry=REGISTRY)
CHARACTERS = Counter("renersans_characters", "characters of text processed", registry=REGISTRY)
# Set to the concurrency gate's counts by create_app (app/limits.py).
IN_FLIGHT = Gauge("renersans_in_flight", "model requests running", registry=REGISTRY)
QUEUED = Gauge("renersans_queued", "model requests waiting for a slot", registry=REGISTRY)
MODEL_INFO = Info("renersans_model", "the loaded bundle, variants and execution providers", registry=REGISTRY)

log = logging.getLogger("app.access")


def record(endpoint: str, result: Any) -> None:
    """Count a model call's documents and time its stages: `result` is one Result, or a list of those that
    were batched together (their stages ran once for all, so they are timed once)."""
    results = result if isinstance(result, list) else [result]
    for r in results:
        DOCUMENTS.labels(endpoint).inc()
        ENTITIES.inc(len(r.document.entities))
        RELATIONS.inc(len(r.document.relations))
        CHARACTERS.inc(len(r.document.text))
    for stage, ms in results[0].timings_ms.items() if results else ():
        STAGE.labels(stage).observe(ms / 1000)


def exposition() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "method", "path", "status", "ms", "bytes", "text"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("app")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RequestLog:
    """A request id for every request (X-Request-ID, generated when absent), one JSON access-log line, and
    the request counters. No request text is logged unless configured.

    The counters' `endpoint` label is the template of the endpoint (one of `endpoints`) that the path
    matches, else "other" (the page, the docs, unknown paths), so that the label's values stay few. The path
    is matched here rather than read from the scope's route, because requests refused in front of the
    application (413, 408, 504: app/limits.py) never reach its routing, and are counted by endpoint too."""

    def __init__(self, app: ASGIApp, endpoints: Iterable[str]) -> None:
        self.app = app
        self.endpoints = [(compile_path(template)[0], template) for template in endpoints]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        started = time.perf_counter()
        status = 500
        size = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        async def receiving() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, receiving, send=sending)
        finally:
            path = scope.get("path", "")
            endpoint = next((t for pattern, t in self.endpoints if pattern.fullmatch(path)), "other")
            elapsed = time.perf_counter() - started
            REQUESTS.labels(endpoint, str(status)).inc()
            LATENCY.labels(endpoint).observe(elapsed)
            extra = {
                "request_id": request_id,
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "bytes": size,
            }
            log.info("request", extra=extra)
