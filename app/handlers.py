"""Every error the application meets answered as JSON (schemas.ErrorResponse), through errors.error_answer:
the project's own errors, validation errors, routing's 404 and 405, and anything unexpected (500)."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.deps import require_json, takes_json
from app.errors import ErrorAnswer, InternalError, RenersansError, UnsupportedMediaType, error_answer

log = logging.getLogger("app")


def add_error_handlers(app: FastAPI) -> None:
    """The exception handlers, and the OpenAPI schema that documents their answers as JSON."""
    app.add_exception_handler(RenersansError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    _errors_as_json(app)


def _respond(answer: ErrorAnswer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def _domain_error(request: Request, exc: RenersansError) -> Response:
    return _respond(exc.answer())


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    # A body that is not JSON fails validation before any dependency runs: for an endpoint that reads JSON,
    # the content type is what to fix.
    if takes_json(request.scope.get("route")):
        try:
            require_json(request)
        except UnsupportedMediaType as wrong_type:
            return _respond(wrong_type.answer())
    detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    return _respond(error_answer(422, "ValidationError", detail))


def _http_error(request: Request, exc: HTTPException) -> Response:
    # Routing's own errors (404, 405) in the same JSON shape as every other error.
    name = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
    detail = f"{exc.detail}: {request.method} {request.url.path}"
    if exc.status_code in (404, 405):
        detail += " (the endpoints and their methods are listed at /docs)"
    return _respond(error_answer(exc.status_code, name, detail, headers=exc.headers))


def _unexpected(request: Request, exc: Exception) -> Response:
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error (error id %s)", error_id, exc_info=exc)
    return _respond(InternalError(f"internal error; error id {error_id}", error_id).answer())


def _errors_as_json(app: FastAPI) -> None:
    """Error answers are JSON on every route, also on those whose success is text or a zip: FastAPI
    documents a route's extra responses in the route's own media type, so move them."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[:1] in "45" and content and "application/json" not in content:
                        response["content"] = {"application/json": next(iter(content.values()))}
        return schema

    app.openapi = openapi
