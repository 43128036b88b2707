"""Who may call: the optional API key (compared in constant time) and the browser origins CORS allows."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

HEADER = "X-API-Key"


def key_matches(given: str | None, expected: str) -> bool:
    """Whether the header's value is the configured key.

    Both are hashed first and the digests compared with `hmac.compare_digest`, so the time taken says
    nothing about how much of a guess was right, nor about the key's length.
    """
    if given is None:
        return False
    try:
        # Starlette decodes header bytes as latin-1: encoding back recovers what the client sent, which for
        # a key with non-ASCII characters is their UTF-8.
        sent = given.encode("latin-1")
    except UnicodeEncodeError:
        sent = given.encode("utf-8")
    return hmac.compare_digest(
        hashlib.sha256(sent).digest(), hashlib.sha256(expected.encode("utf-8")).digest()
    )


def cors_options(origins: list[str]) -> dict[str, Any]:
    """CORSMiddleware's options: only the configured origins, and the headers our clients send and read."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        # Content-Type is always allowed; a browser must also be allowed to send the key and a request id.
        "allow_headers": [HEADER, "X-Request-ID"],
        "expose_headers": ["X-Request-ID", "Retry-After"],
        "max_age": 600,
    }
