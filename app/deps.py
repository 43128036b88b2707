"""What the endpoints depend on: the Extractor (once ready), the API key, fault injection, the JSON content
type, and `run`, which calls the models in one of their slots.

The service's state is on `app.state`, set by app/main.py: `settings`, `extractor` (None until loaded),
`not_ready` (why it is not ready; empty once it is) and `gate` (the model slots, app/limits.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Security
from fastapi.params import Depends as Dependency
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from app import access, faults, observability
from app.errors import BundleError, InferenceError, RenersansError, Unauthorized, UnsupportedMediaType
from app.service import Extractor, Result
from app.settings import Settings

log = logging.getLogger("app")

key_header = APIKeyHeader(
    name=access.HEADER, auto_error=False, description="the key configured in RENERSANS_API_KEY"
)


def extractor(request: Request) -> Extractor:
    """The loaded Extractor; 503 (BundleError) while the service is not ready."""
    state = request.app.state
    if state.extractor is None or state.not_ready:
        raise BundleError(f"not ready: {state.not_ready}")
    return state.extractor


Engine = Annotated[Extractor, Depends(extractor)]


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("application/json"):
        raise UnsupportedMediaType(f"send JSON with Content-Type: application/json (got {kind or 'none'!r})")


# An endpoint that reads a JSON body declares it with a parameter of this type, after its Engine: a request
# with another content type is then refused 415, after the API key and readiness checks, as before any
# check of the body itself.
JsonBody = Annotated[None, Depends(require_json)]


def takes_json(route: object) -> bool:
    """Whether the route declares a JSON body (JsonBody): its validation errors are 415 for another type."""
    return isinstance(route, APIRoute) and any(d.call is require_json for d in route.dependant.dependencies)


def require_key(request: Request, key: Annotated[str | None, Security(key_header)]) -> None:
    if not access.key_matches(key, request.app.state.settings.api_key):
        raise Unauthorized(f"send the API key in the {access.HEADER} header")


async def inject_fault(request: Request) -> None:
    # async, so it runs in the request's own context, which the endpoint's worker thread then copies.
    if value := request.headers.get(faults.HEADER):
        faults.inject(faults.parse(value))


def guards(settings: Settings) -> list[Dependency]:
    """The dependencies of every endpoint that reads documents: the API key where one is configured, and
    fault injection where it is turned on; the probes, /metrics and /version stay open."""
    guarded = [Depends(require_key)] if settings.api_key else []
    if settings.fault_injection:
        log.warning("fault injection is on (RENERSANS_FAULT_INJECTION): for tests only, never in production")
        guarded.append(Depends(inject_fault))
    return guarded


# A Result, or a batch's list of them.
R = TypeVar("R", Result, list[Result])


def run(request: Request, endpoint: str, call: Callable[[], R]) -> R:
    """Run one inference call in one of the model slots (the concurrency limit); a failure inside the models
    is this request's 503, not the process's. `endpoint` labels the documents counted in the metrics; `call`
    gives one Result, or a list of them for a batch."""
    try:
        with request.app.state.gate.slot():
            result = call()
    except RenersansError:
        raise
    except Exception as exc:
        error_id = uuid.uuid4().hex[:12]
        log.exception("inference failed (error id %s)", error_id)
        raise InferenceError(f"inference failed; error id {error_id}", error_id) from exc
    observability.record(endpoint, result)
    return result
