"""The API docs at /docs, served whole by the service (app/docs_ui.py): its files and headers in-process, then
Swagger UI in headless Chromium against a real `renersans serve` that may reach nothing but itself, as on
a closed network."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient
from test_page import browser  # noqa: F401 (a fixture: Debian's Chromium, or a skip saying why)

from app.main import create_app
from app.settings import Settings
from bench.server import start

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "page-screenshots"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The application without a model: the docs need none."""
    settings = Settings(_env_file=None, bundle=tmp_path_factory.mktemp("no-bundle"), wait_for_bundle=True)
    with TestClient(create_app(settings)) as c:
        yield c


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        self._in_script = tag == "script" and "src" not in found

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def test_docs_files_are_the_services_own_and_relative(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    parsed = _Page()
    parsed.feed(docs.text)
    assert len(parsed.urls) == 3 and parsed.scripts, docs.text
    # Relative: resolved against the docs page under any path prefix a proxy adds, and served from there.
    for url in [*parsed.urls, "openapi.json"]:
        resolved = urlsplit(urljoin("https://proxy.example/renersans/docs", url))
        assert resolved.netloc == "proxy.example" and resolved.path.startswith("/renersans/"), url
        served = client.get(resolved.path.removeprefix("/renersans"))
        assert served.status_code == 200 and len(served.content) > 100, url
        assert served.headers.get("x-content-type-options") == "nosniff" or url == "openapi.json", url
    assert "'openapi.json'" in parsed.scripts[0]

    # The one inline script runs because the policy names its hash, and only it: no 'unsafe-inline'.
    policy = dict(p.strip().split(" ", 1) for p in docs.headers["content-security-policy"].split(";"))
    digest = base64.b64encode(hashlib.sha256(parsed.scripts[0].encode()).digest()).decode()
    assert policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert policy["default-src"] == "'self'"

    # FastAPI's pages that load their script from a CDN are gone; an unknown file is the service's JSON 404.
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 404
    missing = client.get("/docs/swagger-ui-standalone-preset.js")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound", missing.text
    assert "/docs" not in client.get("/openapi.json").json()["paths"]


@pytest.fixture(scope="module")
def bare_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`renersans serve` with no model (it waits for one): /docs needs none, so no bundle is loaded."""
    server = start(tmp_path_factory.mktemp("no-bundle"), RENERSANS_WAIT_FOR_BUNDLE="true")
    try:
        server.wait_started(60)
        yield server.url
    finally:
        server.stop()


def test_docs_work_with_nothing_from_elsewhere(browser, bare_site: str) -> None:  # noqa: F811
    """Every request to another origin is refused and recorded, as a closed network would refuse it."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    origin = urlsplit(bare_site)
    elsewhere: list[str] = []

    def only_the_service(route) -> None:
        url = urlsplit(route.request.url)
        if (url.scheme, url.netloc) == (origin.scheme, origin.netloc):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.goto(f"{bare_site}/docs")

    # Swagger UI has read the schema and lists the operations, /extract among them.
    extract = page.locator('.opblock-post .opblock-summary-path[data-path="/extract"]')
    extract.wait_for(state="visible", timeout=30_000)
    schema = page.request.get(f"{bare_site}/openapi.json").json()
    operations = sum(len(ops) for ops in schema["paths"].values())
    assert page.locator(".opblock").count() == operations
    assert "RENERSANs" in page.locator(".info .title").inner_text()
    # Its stylesheet applied (an unstyled page shows the same elements): the POST badge is coloured.
    colour = page.locator(".opblock-post .opblock-summary-method").first.evaluate(
        "n => getComputedStyle(n).backgroundColor"
    )
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), colour

    # Opening an operation renders from the schema too.
    extract.click()
    page.locator(".opblock-post.is-open .opblock-body").first.wait_for(state="visible")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "api-docs.png"))

    assert elsewhere == [], f"the docs tried to reach other origins: {elsewhere}"
    csp = [p for p in problems if re.search(r"Content Security Policy|Refused to", p)]
    assert csp == [] and problems == [], problems
    context.close()
