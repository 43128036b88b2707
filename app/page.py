"""The annotation page at `/`: plain HTML, CSS and JavaScript from app/static, no build step and nothing
fetched from elsewhere (the service often runs on networks with no internet).

The page calls the service's own API with relative URLs, so it also works behind a proxy under a path
prefix. Neither the page nor its files need the API key: the page asks the user for it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# Only this origin's scripts, styles and API; styles set from script go through the CSSOM, which
# `style-src 'self'` allows. Downloads are blob: links, which need no entry here.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _Revalidated(StaticFiles):
    """Static files that the browser revalidates (ETag) on every load, so an upgraded service never runs
    last version's script against this version's API."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def add_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/static/` (neither appears in the OpenAPI schema)."""
    if not (STATIC / "index.html").is_file():
        raise RuntimeError(f"{STATIC / 'index.html'} is missing: reinstall the package (its package data)")
    app.mount("/static", _Revalidated(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)
