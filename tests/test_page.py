"""The annotation page at `/`: its files and the endpoint it reads brat pairs with (in-process), then the page
itself in headless Chromium against a real `renersans serve` on models/default (real predictions).

The browser tests drive Debian's Chromium through Playwright's driver (`./scripts/test.sh` installs the
package where it is missing and it can) and skip, saying so, only where no Chromium is installed. They save
screenshots under build/page-screenshots/.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.page import STATIC
from app.settings import Settings
from app.text.brat import Entity, Relation, format_ann, parse_ann, read_corpus
from bench.server import serve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
SCREENSHOTS = ROOT / "build" / "page-screenshots"
KEY = "page-test-key"
LIMIT = 200_000  # the page test server's request limit: a corpus paragraph fits, the error test's text not
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium tries to reach Google's services, and on an offline machine its connections
    # are then refused, the page's included.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---- the files and the endpoint, in-process (no bundle needed) --------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The application without a model: the page and /brat/parse need none."""
    settings = Settings(_env_file=None, bundle=tmp_path_factory.mktemp("no-bundle"), wait_for_bundle=True)
    with TestClient(create_app(settings)) as c:
        yield c


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_page_and_its_files_are_served_with_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.head("/").status_code == 200
    parser = _Assets()
    parser.feed(page.text)
    local = [u for u in parser.urls if not u.startswith("data:")]
    assert local and all(u.startswith("static/") for u in local), (
        parser.urls
    )  # relative: works under a prefix
    kinds = {".js": "javascript", ".css": "text/css", ".html": "text/html"}
    for path in sorted(STATIC.iterdir()):
        served = client.get(f"/static/{path.name}")
        assert served.status_code == 200 and kinds[path.suffix] in served.headers["content-type"], path.name
        assert served.headers["cache-control"] == "no-cache"
        body = path.read_text(encoding="utf-8")
        # Nothing fetched from elsewhere (the SVG namespace is a name, not a download).
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", body), path.name
        for module in re.findall(r'^import .* from "([^"]+)";$', body, flags=re.M):
            assert module.startswith("./") and (STATIC / module[2:]).is_file(), f"{path.name}: {module}"
    for url in local:
        assert client.get(f"/{url}").status_code == 200, url


def test_page_is_outside_the_api_schema_and_brat_parse_is_in_it(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/" not in schema["paths"] and not any(p.startswith("/static") for p in schema["paths"])
    ok = schema["paths"]["/brat/parse"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/BratDocument")
    assert {"text", "entities", "relations", "warnings"} <= set(
        schema["components"]["schemas"]["BratDocument"]["properties"]
    )


def test_brat_parse_reads_a_pair_as_the_reader_does(client: TestClient, corpus_dir: Path) -> None:
    doc = read_corpus(corpus_dir / "train_part_1")[0]
    txt = (corpus_dir / "train_part_1" / f"{doc.name}.txt").read_bytes()
    ann = (corpus_dir / "train_part_1" / f"{doc.name}.ann").read_bytes()
    r = client.post("/brat/parse", files={"txt": ("d.txt", txt), "ann": ("d.ann", ann)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == doc.text
    assert [(e["id"], e["type"], e["start"], e["end"], e["text"]) for e in body["entities"]] == [
        (e.id, e.type, e.start, e.end, e.text) for e in doc.entities
    ]
    assert [(r["id"], r["type"], r["arg1"], r["arg2"]) for r in body["relations"]] == [
        (r.id, r.type, r.arg1, r.arg2) for r in doc.relations
    ]

    # No .ann: the text alone (the page then runs the models on exactly the file's text).
    alone = client.post("/brat/parse", files={"txt": ("d.txt", "\ufeffРост\r\n".encode())}).json()
    assert (alone["text"], alone["entities"], alone["relations"]) == ("\ufeffРост\r\n", [], [])

    # Discontinuous entities keep their fragments; lines the page does not draw are counted.
    pair = {
        "txt": ("d.txt", "Рост доходов".encode()),
        "ann": ("d.ann", "T1\tCMP 0 2;5 8\tРо дох\n#1\tAnnotatorNotes T1\tx\n".encode()),
    }
    parsed = client.post("/brat/parse", files=pair).json()
    assert parsed["entities"][0]["fragments"] == [[0, 2], [5, 8]]
    assert parsed["warnings"] == {"discontinuous entity": 1, "# line kept but not modelled": 1}


@pytest.mark.parametrize(
    ("files", "status", "error", "words"),
    [
        ({"txt": ("cp.txt", "Отчёт".encode("cp1251"))}, 400, "BadEncoding", "cp.txt: not UTF-8"),
        (
            {"txt": ("d.txt", "Рост".encode()), "ann": ("d.ann", b"T1\tCMP 0 9\t\xd0\xa0\n")},
            422,
            "BratFormatError",
            "d.ann, line 1",
        ),
        ({"ann": ("d.ann", b"")}, 422, "ValidationError", "txt"),
    ],
    ids=["not UTF-8", "offsets past the text", "no .txt"],
)
def test_brat_parse_errors_name_the_file(
    client: TestClient, files: dict, status: int, error: str, words: str
) -> None:
    r = client.post("/brat/parse", files=files)
    assert r.status_code == status and r.json()["error"] == error and words in r.json()["detail"], r.text


def test_the_wheel_carries_the_page(tmp_path: Path) -> None:
    """The images install the package (not the checkout): the page's files must be package data."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
    if importlib.util.find_spec("setuptools"):
        build.append("--no-build-isolation")  # offline and quicker; else pip fetches the build backend
    run = subprocess.run([*build, "-w", str(tmp_path / "out"), str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = (tmp_path / "out").glob("renersans-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {f"app/static/{p.name}" for p in STATIC.iterdir()} - names
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools.package-data]): {missing}"


# ---- the page in Chromium -----------------------------------------------------------------------------


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium found (/usr/bin/chromium or chromium on PATH): install Debian's package "
            "(`sudo apt-get install chromium`; ./scripts/test.sh does it when run as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site(corpus_dir: Path) -> Iterator[str]:
    """`renersans serve` on models/default, with an API key (the page asks for it) and a small body limit."""
    if not (DEFAULT / "manifest.json").exists():
        pytest.skip("models/default has not been exported yet")
    with serve(DEFAULT, ready_s=120, RENERSANS_API_KEY=KEY, RENERSANS_MAX_REQUEST_BYTES=str(LIMIT)) as server:
        yield server.url


def open_page(browser, url: str, key: str | None = KEY, width: int = 1000):
    context = browser.new_context(viewport={"width": width, "height": 800}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.problems = problems
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready]")
    if key:
        page.locator("#key-box summary").click()
        page.fill("#api-key", key)
    return page


def wait_for_error(page, kind: str) -> None:
    # A function, not an expression: Playwright evaluates expressions with eval, which the page's CSP forbids.
    page.wait_for_function("kind => document.getElementById('error').dataset.kind === kind", arg=kind)


def screenshot(page, name: str, whole: bool = True) -> None:
    """The result (`whole`), or only what the window shows of the page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => document.activeElement?.blur()")  # no focus ring in the picture
    path = str(SCREENSHOTS / f"{name}.png")
    if whole:
        page.locator("#result").screenshot(path=path)
    else:
        page.screenshot(path=path)


def paragraph_with_most_relations(corpus_dir: Path) -> str:
    """The train_part_1 paragraph of 300-700 characters with the most gold relations inside it."""
    best: tuple[int, str] = (-1, "")
    for doc in read_corpus(corpus_dir / "train_part_1"):
        at = 0
        for line in doc.text.split("\n"):
            start, end, at = at, at + len(line), at + len(line) + 1
            if not 300 <= len(line) <= 700:
                continue
            inside = {e.id for e in doc.entities if start <= e.start and e.end <= end}
            n = sum(r.arg1 in inside and r.arg2 in inside for r in doc.relations)
            if n > best[0]:
                best = (n, line)
    return best[1]


# What the page drew, read back from the DOM: each entity's pieces (data-start/-end are the API's code-point
# offsets), its label, and each arc with its arguments.
DRAWN = """() => {
  const entities = {};
  for (const node of document.querySelectorAll("#doc .ent")) {
    for (const id of node.dataset.ents.split(" ")) {
      const piece = [+node.dataset.start, +node.dataset.end, node.textContent, node.dataset.type];
      (entities[id] ||= []).push(piece);
    }
  }
  const labels = [...document.querySelectorAll("#doc .lab")].map((n) => [n.dataset.ent, n.textContent]);
  const arcs = [...document.querySelectorAll("#doc g.arc")].map(
    (g) => [g.dataset.rel, g.dataset.type, g.dataset.arg1, g.dataset.arg2]);
  return { entities, labels, arcs };
}"""

# Every arc's legs end on its arguments: each visible line's ends are either at the left or right edge (a
# relation across rows) or on the top edge of one of the argument's pieces, and the arrowhead is on Arg2.
ATTACHED = """() => {
  const problems = [];
  const svg = document.querySelector("#doc svg.arcs");
  const box = svg.getBoundingClientRect();
  const width = +svg.getAttribute("width");
  const rectsOf = {};
  for (const n of document.querySelectorAll("#doc .ent")) {
    for (const id of n.dataset.ents.split(" ")) (rectsOf[id] ||= []).push(...n.getClientRects());
  }
  const on = (p, id) => (rectsOf[id] || []).some((r) =>
    p.x >= r.left - box.left - 1 && p.x <= r.right - box.left + 1 && Math.abs(p.y - (r.top - box.top)) <= 3);
  for (const g of svg.querySelectorAll("g.arc")) {
    const legs = { [g.dataset.arg1]: 0, [g.dataset.arg2]: 0 };
    let arrows = 0;
    for (const path of g.querySelectorAll("path.line")) {
      const ends = [path.getPointAtLength(0), path.getPointAtLength(path.getTotalLength())];
      ends.forEach((p, k) => {
        if (p.x <= 0.5 || p.x >= width - 0.5) return;  // leaves its row: continued on the other row
        const arg = [g.dataset.arg1, g.dataset.arg2].find((id) => on(p, id));
        if (!arg) problems.push(`${g.dataset.rel}: a leg at ${p.x},${p.y} is on neither argument`);
        else legs[arg] += 1;
        if (k === 1 && path.hasAttribute("marker-end")) {
          arrows += 1;
          if (!on(p, g.dataset.arg2)) problems.push(`${g.dataset.rel}: the arrowhead is not on Arg2`);
        }
      });
    }
    const self = g.dataset.arg1 === g.dataset.arg2;
    if (self ? legs[g.dataset.arg1] !== 2 : legs[g.dataset.arg1] !== 1 || legs[g.dataset.arg2] !== 1) {
      problems.push(`${g.dataset.rel}: legs ${JSON.stringify(legs)}`);
    }
    if (arrows !== 1) problems.push(`${g.dataset.rel}: ${arrows} arrowheads`);
  }
  return problems;
}"""


# The page breaks rows itself from measured widths: no row may run past the text's right edge (trailing spaces
# aside), or its arcs would have been placed for a line the browser does not show.
FITS = """() => {
  const rows = document.querySelector("#doc .rows");
  const right = rows.getBoundingClientRect().right - parseFloat(getComputedStyle(rows).paddingRight);
  const problems = [];
  document.querySelectorAll("#doc .row").forEach((row, k) => {
    const last = [...row.children].filter((n) => n.textContent.trim()).at(-1);
    const over = last ? last.getBoundingClientRect().right - right : 0;
    if (over > 1) problems.push(`row ${k} runs ${over.toFixed(1)} px past the edge`);
  });
  return problems;
}"""


def drawn_entities(drawn: dict) -> dict[str, tuple[str, int, int, str]]:
    """Entity id -> (type, start, end, text) from its drawn pieces, which must be contiguous."""
    out = {}
    for ident, pieces in drawn["entities"].items():
        pieces.sort()
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces)), (ident, pieces)
        assert len({p[3] for p in pieces}) == 1, (ident, pieces)
        out[ident] = (pieces[0][3], pieces[0][0], pieces[-1][1], "".join(p[2] for p in pieces))
    return out


def highlighted(page) -> set[str]:
    """The ids of the entities that hovering has brought out."""
    found = page.eval_on_selector_all("#doc .ent.hl", "ns => ns.map(n => n.dataset.ents)")
    return {ident for ids in found for ident in ids.split()}


def luminance(css: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"\d+(?:\.\d+)?", css)[:3])

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# (what, foreground, background, the least contrast WCAG 2 asks for: 4.5 for text, 3 for graphics)
COLOURS = """() => {
  const pairs = [];
  const text = (what, n) => {
    const s = getComputedStyle(n);
    pairs.push([what, s.color, s.backgroundColor, 4.5]);
  };
  document.querySelectorAll("#doc .ent").forEach((n) => text("entity " + n.dataset.type, n));
  document.querySelectorAll("#doc .lab").forEach((n) => text("label " + n.textContent, n));
  document.querySelectorAll(".chip").forEach((n) => text("legend " + n.dataset.type, n));
  for (const n of document.querySelectorAll("#doc g.arc text"))
    pairs.push(["arc label " + n.textContent, getComputedStyle(n).fill, "rgb(255, 255, 255)", 4.5]);
  for (const n of document.querySelectorAll("#doc g.arc path.line"))
    pairs.push(["arc line", getComputedStyle(n).stroke, "rgb(255, 255, 255)", 3]);
  return pairs;
}"""


def test_pasted_paragraph_is_drawn_as_the_api_answers(browser, site: str, corpus_dir: Path) -> None:
    text = paragraph_with_most_relations(corpus_dir)
    page = open_page(browser, site)
    page.fill("#text", text)
    with page.expect_response(lambda r: r.url.endswith("/extract")) as answer:
        page.focus("#run")
        page.keyboard.press("Enter")
    body = answer.value.json()
    page.wait_for_selector("#result:not([hidden])")
    assert body["entities"] and body["relations"], "the default model finds entities and relations here"

    drawn = page.evaluate(DRAWN)
    assert drawn_entities(drawn) == {
        e["id"]: (e["type"], e["start"], e["end"], e["text"]) for e in body["entities"]
    }
    assert sorted(drawn["labels"]) == sorted([e["id"], e["type"]] for e in body["entities"])
    assert sorted(drawn["arcs"]) == sorted(
        [r["id"], r["type"], r["arg1"], r["arg2"]] for r in body["relations"]
    )
    assert page.evaluate(ATTACHED) == [] and page.evaluate(FITS) == []
    for name, fg, bg, least in page.evaluate(COLOURS):
        assert contrast(fg, bg) >= least, f"{name}: {fg} on {bg}"

    # Model, providers and timings, as the API reported them.
    facts = page.inner_text("#facts")
    assert body["model"]["bundle"] in facts
    assert all(p in facts for p in body["model"]["providers"].values())
    assert "segmentation" in facts and "ms in the model" in facts

    # The legend counts each type and hides it from the keyboard; its arcs go with it.
    counts = dict(
        page.eval_on_selector_all(
            "#entity-legend .chip",
            "cs => cs.map(c => [c.dataset.type, +c.querySelector('.chip-count').textContent])",
        )
    )
    assert counts == Counter(e["type"] for e in body["entities"])
    by_id = {e["id"]: e for e in body["entities"]}
    hidden = by_id[body["relations"][0]["arg1"]]["type"]
    chip = page.locator(f'#entity-legend .chip[data-type="{hidden}"]')
    chip.focus()
    page.keyboard.press("Space")
    assert chip.get_attribute("aria-pressed") == "false"
    left = page.evaluate(DRAWN)
    assert {t for t, *_ in drawn_entities(left).values()} == set(counts) - {hidden}
    assert all(hidden not in (by_id[a1]["type"], by_id[a2]["type"]) for _, _, a1, a2 in left["arcs"])
    assert page.evaluate(ATTACHED) == [] and page.evaluate(FITS) == []
    page.keyboard.press("Space")
    assert sorted(page.evaluate(DRAWN)["arcs"]) == sorted(drawn["arcs"])

    # Hovering an entity brings out its partners and arcs; hovering an arc, its two arguments.
    rel = body["relations"][0]
    page.hover(f'#doc .ent[data-ents~="{rel["arg1"]}"]')
    assert page.locator(f'#doc .ent.hl[data-ents~="{rel["arg2"]}"]').count() >= 1
    assert page.locator(f'#doc g.arc.hl[data-rel="{rel["id"]}"]').count() == 1
    partners = {rel["arg1"]} | {
        r[a] for r in body["relations"] for a in ("arg1", "arg2") if rel["arg1"] in (r["arg1"], r["arg2"])
    }
    assert highlighted(page) == partners
    point = page.evaluate(
        """() => {
          document.querySelector("#doc").scrollIntoView();
          for (const g of document.querySelectorAll("#doc g.arc")) {
            const r = g.querySelector("text").getBoundingClientRect();
            const [x, y] = [r.left + r.width / 2, r.top + r.height / 2];
            if (g.contains(document.elementFromPoint(x, y))) return { x, y, rel: g.dataset.rel };
          }
        }"""
    )
    assert point, "every arc label is covered by another arc"
    page.mouse.move(point["x"], point["y"])
    target = next(r for r in body["relations"] if r["id"] == point["rel"])
    assert highlighted(page) == {target["arg1"], target["arg2"]}
    page.mouse.move(1, 1)
    screenshot(page, "pasted-paragraph")

    # A narrow window: the rows wrap anew and the arcs stay on their entities.
    rows = page.locator("#doc .row").count()
    page.set_viewport_size({"width": 560, "height": 800})
    page.wait_for_function("n => document.querySelectorAll('#doc .row').length > n", arg=rows)
    assert page.evaluate(ATTACHED) == [] and page.evaluate(FITS) == []
    screenshot(page, "pasted-paragraph-narrow")
    page.set_viewport_size({"width": 1000, "height": 800})

    # The tables, reached from the keyboard, sort by a column and say each arc in words.
    page.focus("#tab-text")
    page.keyboard.press("ArrowRight")
    assert page.locator("#panel-tables").is_visible() and not page.locator("#panel-text").is_visible()
    assert page.locator("#entity-table tbody tr").count() == len(body["entities"])
    words = page.locator("#relation-table tbody tr td:last-child").all_inner_texts()
    for r in body["relations"]:
        a, b = by_id[r["arg1"]], by_id[r["arg2"]]
        assert any(
            w.startswith(f"{r['type']}: ")
            and f"({a['type']}, {a['id']}) → " in w
            and f"({b['type']}, {b['id']})" in w
            for w in words
        ), r
    end_header = page.locator("#entity-table th", has_text="End")
    end_header.locator("button").click()
    ends = [int(x) for x in page.locator("#entity-table tbody tr td:nth-child(4)").all_inner_texts()]
    assert ends == sorted(ends) and end_header.get_attribute("aria-sort") == "ascending"
    end_header.locator("button").press("Enter")
    ends = [int(x) for x in page.locator("#entity-table tbody tr td:nth-child(4)").all_inner_texts()]
    assert ends == sorted(ends, reverse=True) and end_header.get_attribute("aria-sort") == "descending"
    screenshot(page, "tables")

    # Downloads: the .ann is what the service's own writer makes of the answer; the .json is the answer.
    with page.expect_download() as ann:
        page.click("#download-ann")
    entities = [Entity(e["id"], e["type"], e["start"], e["end"], e["text"]) for e in body["entities"]]
    relations = [Relation(r["id"], r["type"], r["arg1"], r["arg2"]) for r in body["relations"]]
    assert ann.value.suggested_filename == "document.ann"
    assert Path(ann.value.path()).read_text(encoding="utf-8") == format_ann(entities, relations)
    with page.expect_download() as js:
        page.click("#download-json")
    assert json.loads(Path(js.value.path()).read_text(encoding="utf-8")) == body
    assert page.problems == []


def test_uploaded_pair_is_drawn_as_the_file(browser, site: str, corpus_dir: Path, tmp_path: Path) -> None:
    """A long corpus document with its gold .ann, behind a line with an emoji and CRLF: offsets are code
    points (the emoji counts once, as in Python and brat), and the text is drawn as the file holds it."""
    docs = [d for d in read_corpus(corpus_dir / "train_part_3") if len(d.text) <= 12_000]
    doc = max(docs, key=lambda d: (len(d.relations), d.name))
    prefix = "😀 Отчёт\r\n"
    shift = len(prefix)
    text = prefix + doc.text
    entities = [
        Entity(
            e.id,
            e.type,
            e.start + shift,
            e.end + shift,
            e.text,
            tuple((a + shift, b + shift) for a, b in e.fragments),
        )
        for e in doc.entities
    ]
    ann = format_ann(entities, doc.relations)
    (tmp_path / "report.txt").write_bytes(text.encode())
    (tmp_path / "report.ann").write_bytes(ann.encode())
    expected = parse_ann(ann, text)

    page = open_page(browser, site, width=900)
    page.set_input_files("#txt-file", str(tmp_path / "report.txt"))
    page.set_input_files("#ann-file", str(tmp_path / "report.ann"))
    page.click("#open")
    page.wait_for_selector("#result:not([hidden])")
    drawn = page.evaluate(DRAWN)
    assert drawn_entities(drawn) == {
        e.id: (e.type, e.start, e.end, text[e.start : e.end]) for e in expected.entities
    }
    assert sorted(drawn["arcs"]) == sorted([r.id, r.type, r.arg1, r.arg2] for r in expected.relations)
    assert page.evaluate(ATTACHED) == [] and page.evaluate(FITS) == []
    assert "no model ran" in page.inner_text("#facts")
    # A file's annotations have no scores: no score bar, no score column.
    assert page.locator("#score-filter").is_hidden()
    assert page.locator("#entity-table th", has_text="Score").count() == 1
    assert page.locator("#entity-table th", has_text="Score").is_hidden()
    assert "score" not in (page.locator("#doc .lab").first.get_attribute("title") or "")
    screenshot(page, "uploaded-pair", whole=False)

    with page.expect_download() as got:
        page.click("#download-ann")
    assert got.value.suggested_filename == "report.ann"
    assert Path(got.value.path()).read_text(encoding="utf-8") == ann
    with page.expect_download() as got:
        page.click("#download-txt")
    assert Path(got.value.path()).read_bytes() == text.encode()
    assert page.problems == []


def test_uploaded_text_alone_is_annotated_as_the_file_holds_it(
    browser, site: str, corpus_dir: Path, tmp_path: Path
) -> None:
    """A .txt without .ann runs the models on the file's exact text (CRLF kept, which a text box would turn
    into LF), so the downloaded .ann fits the file."""
    text = "\r\n".join(paragraph_with_most_relations(corpus_dir).split(". ")[:3])
    (tmp_path / "crlf.txt").write_bytes(text.encode())
    page = open_page(browser, site)
    page.set_input_files("#txt-file", str(tmp_path / "crlf.txt"))
    with page.expect_response(lambda r: r.url.endswith("/extract")) as answer:
        page.click("#open")
    assert answer.value.request.post_data_json["text"] == text
    body = answer.value.json()
    page.wait_for_selector("#result:not([hidden])")
    assert body["entities"], "the default model finds entities in these sentences"
    assert drawn_entities(page.evaluate(DRAWN)) == {
        e["id"]: (e["type"], e["start"], e["end"], e["text"]) for e in body["entities"]
    }
    with page.expect_download() as got:
        page.click("#download-ann")
    assert got.value.suggested_filename == "crlf.ann"
    parse_ann(
        Path(got.value.path()).read_text(encoding="utf-8"), text
    )  # checks every offset against the file
    assert page.problems == []


def shown_score(score: float) -> str:
    """A score as the page writes it: two decimals rounded down, the score bar's steps."""
    return f"{math.floor(score * 100 + 1e-9) / 100:.2f}"


def set_bar(page, value: float) -> None:
    """The score bar at `value`, as dragging it leaves it (an input event)."""
    page.eval_on_selector(
        "#threshold",
        "(n, v) => { n.value = v; n.dispatchEvent(new Event('input', { bubbles: true })); }",
        str(value),
    )


# The ids of the entities and relations drawn, the table rows and the legend's counts.
SHOWN = """() => ({
  entities: [...new Set([...document.querySelectorAll("#doc .ent")].flatMap((n) => n.dataset.ents.split(" ")))
  ].sort(),
  arcs: [...document.querySelectorAll("#doc g.arc")].map((g) => g.dataset.rel),
  entityRows: [...document.querySelectorAll("#entity-table tbody tr")].map((r) => r.cells[0].textContent),
  relationRows: [...document.querySelectorAll("#relation-table tbody tr")].map((r) => r.cells[0].textContent),
  counts: Object.fromEntries([...document.querySelectorAll("#entity-legend .chip, #relation-legend .chip")]
    .map((c) => [c.dataset.type, +c.querySelector(".chip-count").textContent])),
})"""


def test_scores_are_shown_and_the_bar_hides_what_is_below_it(browser, site: str, corpus_dir: Path) -> None:
    text = paragraph_with_most_relations(corpus_dir)
    page = open_page(browser, site)
    page.fill("#text", text)
    with page.expect_response(lambda r: r.url.endswith("/extract")) as answer:
        page.click("#run")
    body = answer.value.json()
    page.wait_for_selector("#result:not([hidden])")
    entities, relations = body["entities"], body["relations"]
    assert entities and relations, "the default model finds entities and relations here"
    scored = entities + relations
    assert all(isinstance(x.get("score"), float) and 0 <= x["score"] <= 1 for x in scored), scored
    by_id = {e["id"]: e for e in entities}

    # Each score on hover (the label's and the arc's tooltips) and in the tables' Score column.
    for e in entities:
        title = page.locator(f'#doc .lab[data-ent="{e["id"]}"]').get_attribute("title")
        assert f"score {shown_score(e['score'])}" in title, (e, title)
    for r in relations:
        title = page.locator(f'#doc g.arc[data-rel="{r["id"]}"] > title').text_content()
        assert title.endswith(f"score {shown_score(r['score'])}"), (r, title)
    for table, items in (("#entity-table", entities), ("#relation-table", relations)):
        headers = page.locator(f"{table} th").all_inner_texts()
        column = headers.index("Score")
        cells = page.eval_on_selector_all(
            f"{table} tbody tr",
            "(rows, k) => rows.map((r) => [r.cells[0].textContent, r.cells[k].textContent])",
            column,
        )
        assert dict(cells) == {x["id"]: shown_score(x["score"]) for x in items}
    # The Score column sorts as the others do.
    page.click("#tab-tables")
    score_header = page.locator("#entity-table th", has_text="Score")
    score_header.locator("button").click()
    column = page.locator("#entity-table th").all_inner_texts().index("Score") + 1
    sorted_scores = page.locator(f"#entity-table tbody tr td:nth-child({column})").all_inner_texts()
    assert sorted_scores == sorted(sorted_scores) and score_header.get_attribute("aria-sort") == "ascending"
    page.click("#tab-text")

    # The bar: labelled, shows its value, starts at 0 with everything the API returned.
    bar = page.get_by_label("Lowest score shown")
    assert bar.is_visible() and bar.input_value() == "0"
    assert page.inner_text("#threshold-value") == "0.00"
    everything = page.evaluate(SHOWN)
    assert sorted(everything["entities"]) == sorted(by_id) and sorted(everything["entityRows"]) == sorted(
        by_id
    )
    assert sorted(everything["arcs"]) == sorted(r["id"] for r in relations)
    assert everything["counts"] == Counter(e["type"] for e in entities) + Counter(
        r["type"] for r in relations
    )

    # Raised step by step: never more than before; exactly what scores at least the bar, with the relations
    # between such entities; the legend counts what is shown. Steps at the scores themselves and just above.
    steps = sorted({min(1.0, math.floor(x["score"] * 100) / 100 + d) for x in scored for d in (0, 0.01)})
    before = set(by_id)
    for bar_at in [round(v, 2) for v in steps]:
        set_bar(page, bar_at)
        now = page.evaluate(SHOWN)
        kept = {e["id"] for e in entities if e["score"] >= bar_at}
        arcs = {r["id"] for r in relations if r["score"] >= bar_at and {r["arg1"], r["arg2"]} <= kept}
        assert set(now["entities"]) <= before, f"raising the bar to {bar_at} showed an entity"
        assert set(now["entities"]) == kept and set(now["entityRows"]) == kept, bar_at
        assert set(now["arcs"]) == arcs and set(now["relationRows"]) == arcs, bar_at
        shown_types = Counter(by_id[i]["type"] for i in kept) + Counter(
            r["type"] for r in relations if r["id"] in arcs
        )
        assert {t: n for t, n in now["counts"].items() if n} == shown_types, bar_at
        assert page.inner_text("#threshold-value") == f"{bar_at:.2f}"
        before = set(now["entities"])
    assert page.evaluate(ATTACHED) == []

    # From the keyboard: Home back to 0 (everything again), arrows by 0.01, End to 1.
    bar.focus()
    page.keyboard.press("Home")
    assert sorted(page.evaluate(SHOWN)["entities"]) == sorted(by_id)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert bar.input_value() == "0.02" and page.inner_text("#threshold-value") == "0.02"
    highest = max(e["score"] for e in entities)
    set_bar(page, math.floor(highest * 100) / 100)
    assert page.evaluate(SHOWN)["entities"], "the best-scored entity stays at its own score"
    screenshot(page, "scores-bar")

    # The downloads keep the whole answer, whatever the bar hides (as the page says).
    bar.focus()
    page.keyboard.press("End")
    assert bar.input_value() == "1" and page.evaluate(SHOWN)["entities"] == sorted(
        e["id"] for e in entities if e["score"] >= 1
    )
    assert "downloads keep the whole answer" in page.inner_text("#score-filter")
    with page.expect_download() as js:
        page.click("#download-json")
    assert json.loads(Path(js.value.path()).read_text(encoding="utf-8")) == body
    with page.expect_download() as ann:
        page.click("#download-ann")
    assert len(parse_ann(Path(ann.value.path()).read_text(encoding="utf-8"), text).entities) == len(entities)

    # The bar's texts keep their contrast on the page's white.
    for selector in ("#score-filter label", "#threshold-value", "#threshold-shown", "#threshold-note"):
        colour = page.eval_on_selector(selector, "n => getComputedStyle(n).color")
        assert contrast(colour, "rgb(255, 255, 255)") >= 4.5, selector
    assert page.problems == []


def test_errors_are_shown_in_plain_words(browser, site: str, tmp_path: Path) -> None:
    page = open_page(browser, site, key=None)
    error = page.locator("#error")

    # No key: the page says so and takes the user to the key field.
    page.fill("#text", "Рост доходов населения обеспечен за счёт повышения заработной платы.")
    page.click("#run")
    error.wait_for(state="visible")
    assert error.get_attribute("role") == "alert"
    assert "This service needs an API key." in error.inner_text()
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", KEY)

    # Over the service's size limit.
    page.evaluate("n => { document.getElementById('text').value = 'Рост доходов. '.repeat(n); }", LIMIT // 10)
    with page.expect_response(lambda r: r.url.endswith("/extract")) as answer:
        page.click("#run")
    assert answer.value.status == 413
    wait_for_error(page, "PayloadTooLarge")
    assert "The document is too large for this service." in error.inner_text()
    assert "Split it into parts" in error.inner_text()

    # A file that is not UTF-8, and an .ann that does not fit its text.
    (tmp_path / "cp1251.txt").write_bytes("Отчёт о росте доходов".encode("cp1251"))
    page.set_input_files("#txt-file", str(tmp_path / "cp1251.txt"))
    page.click("#open")
    wait_for_error(page, "BadEncoding")
    assert "The file is not UTF-8 text." in error.inner_text() and "cp1251.txt" in error.inner_text()

    (tmp_path / "good.txt").write_text("Рост доходов", encoding="utf-8")
    (tmp_path / "bad.ann").write_text("T1\tCMP 0 4\tРост\nT2\tMET 5 40\tдоходов\n", encoding="utf-8")
    page.set_input_files("#txt-file", str(tmp_path / "good.txt"))
    page.set_input_files("#ann-file", str(tmp_path / "bad.ann"))
    page.click("#open")
    wait_for_error(page, "BratFormatError")
    assert "does not fit the text" in error.inner_text() and "bad.ann, line 2" in error.inner_text()
    assert page.locator("#result").is_hidden()  # nothing half-drawn
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("main").screenshot(path=str(SCREENSHOTS / "error.png"))
    assert [p for p in page.problems if "Failed to load resource" not in p] == []
    httpx.get(f"{site}/health").raise_for_status()
