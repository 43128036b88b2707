"""The interactive API docs at `/docs`, served whole by the service: Swagger UI's script and stylesheet come
from the installed `fastapi-swagger` package, not from a CDN, because the service often runs on networks with
no internet, where FastAPI's default `/docs` is a blank page.

All URLs are relative, as on the annotation page, so the docs also work behind a proxy under a path prefix.
ReDoc (FastAPI's `/redoc`) is not served: no maintained package ships its script for offline use.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

# Swagger UI's files inside the fastapi-swagger wheel: that package follows Swagger UI's releases.
ASSETS = Path(str(resources.files("fastapi_swagger") / "resources"))
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _page(title: str) -> tuple[bytes, str]:
    """The docs page and its Content-Security-Policy. The page starts Swagger UI with one inline script,
    allowed by its hash, so that nothing else inline can run; Swagger UI's icons are data: URLs."""
    html = get_swagger_ui_html(
        openapi_url="openapi.json",
        title=title,
        swagger_js_url="docs/swagger-ui-bundle.js",
        swagger_css_url="docs/swagger-ui.css",
        swagger_favicon_url="docs/favicon-32x32.png",
    ).body
    inline = re.findall(rb"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    policy = "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {hashes}",
            # Swagger UI sets style attributes in its markup, which only 'unsafe-inline' allows.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, policy


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at `/docs` and its files under `/docs/`. The app must be made with `docs_url=None`
    and `redoc_url=None`, so that FastAPI's CDN-loading pages are not registered first."""
    missing = [name for name in ASSET_TYPES if not (ASSETS / name).is_file()]
    if missing:
        raise RuntimeError(f"{ASSETS} lacks {missing}: reinstall the package fastapi-swagger")
    html, policy = _page(f"{app.title}: API docs")
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_file(name: str) -> FileResponse:
        if name not in ASSET_TYPES:
            # The same JSON 404 as any unknown path (the app's HTTPException handler).
            raise HTTPException(404, "Not Found")
        return FileResponse(
            ASSETS / name,
            media_type=ASSET_TYPES[name],
            # Revalidated, as the page's files are: an upgrade never mixes an old script with a new page.
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )
