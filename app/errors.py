"""The project's exceptions, one tree, and the HTTP status each maps to:

RenersansError
├── BratFormatError           a .ann/.txt pair that cannot be read as brat standoff   422
├── InputError                a request or file we cannot process                     400
│   ├── BadEncoding           a file that is not UTF-8 text                           400
│   ├── InvalidEntities       given entities outside the text, unknown, overlapping   422
│   ├── PayloadTooLarge       a body over the configured size                         413
│   ├── ReadTimeout           a request not received within the configured time       408
│   └── UnsupportedMediaType  a content type the endpoint does not read               415
├── Unauthorized              no API key, or the wrong one, where one is configured   401
├── BundleError               a model bundle missing, broken or of the wrong version  503
├── InferenceError            the models failed on one request                        503
├── Overloaded                more requests waiting than the configured queue holds   503
├── ShuttingDown              the grace period ended before the request was answered  503
├── ProcessingTimeout         a request not answered within the configured time       504
└── InternalError             a fault of ours (a bug): logged with its error id       500

docs/reliability.md lists what the service does for each, and the test that shows it. Every error answer,
whether from the application or from the limits in front of it, is written by `error_answer`.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ErrorAnswer:
    """An error as the service sends it: the status, the headers (Content-Type and Content-Length among
    them) and the JSON body of schemas.ErrorResponse."""

    status: int
    headers: dict[str, str]
    body: bytes


def error_answer(
    status: int,
    error: str,
    detail: str,
    error_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorAnswer:
    """The one writer of JSON error answers; `headers` (such as Retry-After) go with it."""
    content = {"error": error, "detail": detail, "error_id": error_id}
    # Encoded as Starlette's JSONResponse encodes, so that every error answer has the same bytes.
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    sized = {"content-type": "application/json", "content-length": str(len(body))}
    return ErrorAnswer(status, {**(headers or {}), **sized}, body)


class RenersansError(Exception):
    """Base class: every error the project raises on purpose."""

    status = 500
    headers: ClassVar[dict[str, str] | None] = None  # HTTP headers that go with the answer

    def __init__(self, message: str = "", error_id: str | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id  # set where the log holds more under the same id

    def answer(self) -> ErrorAnswer:
        """The HTTP answer to this error: its status, its headers and the JSON body."""
        return error_answer(self.status, type(self).__name__, str(self), self.error_id, self.headers)


class BratFormatError(RenersansError, ValueError):
    """Malformed brat standoff; the message names the file and line."""

    status = 422


class InputError(RenersansError, ValueError):
    """Client input we refuse; the message says what is wrong and what to send instead."""

    status = 400


class BadEncoding(InputError):
    status = 400


class InvalidEntities(InputError):
    status = 422


class PayloadTooLarge(InputError):
    status = 413


class ReadTimeout(InputError):
    """The client took longer than `RENERSANS_READ_TIMEOUT_S` to send its request (slow or stalled)."""

    status = 408


class UnsupportedMediaType(InputError):
    status = 415


class Unauthorized(RenersansError):
    status = 401


class BundleError(RenersansError):
    """A model bundle that cannot be loaded; the message names the file."""

    status = 503


class InferenceError(RenersansError):
    """The models failed on one request; other requests are unaffected. `error_id` is in the log."""

    status = 503


class Overloaded(RenersansError):
    """All model slots busy and the queue full (`RENERSANS_MAX_CONCURRENCY`, `RENERSANS_MAX_QUEUE`), or the
    connections at their limit. `retry_after_s` (whole seconds, HTTP's Retry-After) is when a retry is
    likely to be taken: app/limits.py estimates it from the queue."""

    status = 503

    def __init__(self, message: str = "", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class ShuttingDown(RenersansError):
    """The server stopped (SIGTERM) and its grace period ended before this request was answered."""

    status = 503


class ProcessingTimeout(RenersansError):
    """Not answered within `RENERSANS_REQUEST_TIMEOUT_S` of arriving (queueing included)."""

    status = 504


class InternalError(RenersansError):
    """An unexpected exception: a bug. The answer carries the error id that the log has with the trace."""

    status = 500
