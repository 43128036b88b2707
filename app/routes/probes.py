"""What orchestrators and operators ask: alive, ready, metrics, version. `async def`, so that they need no
worker thread and answer even while every thread is busy; open without the API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app import drain, observability

VERSION = "0.1.0"
router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """The process is alive (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """The bundle is loaded, warmed up, and on the execution provider configured, and the server is not
    draining (`renersans drain`: it still serves, but is leaving)."""
    state = request.app.state
    reason = "draining: this replica is stopping" if drain.STATE.draining else state.not_ready
    ok = state.extractor is not None and not reason
    body = {"ready": ok, "reason": reason or None}
    if state.extractor is not None:
        body["model"] = state.extractor.info()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    """Prometheus text format."""
    return observability.exposition()


@router.get("/version")
async def version(request: Request) -> dict:
    ex = request.app.state.extractor
    return {"version": VERSION, "model": ex.info() if ex else None}
