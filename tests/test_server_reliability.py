"""Reliability and access through a real server: what the service does with bad input, slow or greedy
clients, broken bundles, failing models, shutdown, and callers it should not serve.

Every row of the table in docs/reliability.md names a test here or in tests/test_reliability.py (the parts
that need no server); a test below checks that the names exist. The tests here run real `renersans serve`
processes on 127.0.0.1 with real ONNX Runtime sessions (the tiny bundle); faults inside the models are
real runtime errors, made on demand by the test-only hook of app/faults.py.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import onnxruntime
import pytest
from fastapi.dependencies.models import Dependant
from serving import (
    LIMIT,
    READ_TIMEOUT_S,
    Answer,
    Served,
    request_head,
    send_raw,
    wait_for,
    zip_of,
)

from app import deps, errors
from app.main import create_app
from app.manifest import Manifest, read_manifest, sha256, write_manifest
from app.routes import api_routes
from app.settings import Settings
from app.text.brat import read_corpus
from bench.server import serve, start

ROOT = Path(__file__).resolve().parents[1]
TEN_MB = 10_000_000
ERROR_ID = re.compile(r"^[0-9a-f]{12}$")
GARBAGE = bytes(range(256)) * 8  # never valid UTF-8, never a zip, never JSON


@pytest.fixture(scope="module")
def corpus_text(tiny_checkpoints: tuple[Path, Path, Path]) -> str:
    """A real corpus passage, on which the tiny model finds entities."""
    return read_corpus(tiny_checkpoints[0])[1].text


def check_offsets(text: str, body: dict) -> None:
    ids = {e["id"] for e in body["entities"]}
    for e in body["entities"]:
        assert 0 <= e["start"] < e["end"] <= len(text) and text[e["start"] : e["end"]] == e["text"]
    assert all(r["arg1"] in ids and r["arg2"] in ids for r in body["relations"])


def metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith(f"{name} ")))


# ---- the bad-input matrix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[str], Answer]
    status: int
    error: str
    detail: str = ""  # what the message must name (the file, the id, the limit)
    check: Callable[[Answer], None] | None = None


def post(path: str, **kwargs) -> Callable[[str], Answer]:
    def send(url: str) -> Answer:
        started = time.monotonic()
        r = httpx.post(f"{url}{path}", timeout=60, **kwargs)
        return Answer(r.status_code, dict(r.headers), r.content, seconds=time.monotonic() - started)

    return send


def get(path: str) -> Callable[[str], Answer]:
    return lambda url: (lambda r: Answer(r.status_code, dict(r.headers), r.content))(
        httpx.get(f"{url}{path}")
    )


def raw(chunks: Callable[[], Iterable[bytes]], pause_s: float = 0.0) -> Callable[[str], Answer]:
    return lambda url: send_raw(url, chunks(), pause_s=pause_s, timeout_s=READ_TIMEOUT_S + 20)


def forged_zip_bomb() -> bytes:
    """10 MB of text whose headers claim 100 bytes: the size check passes, the reading must stop."""
    data = bytearray(zip_of({"big.txt": b"a" * TEN_MB}))
    struct.pack_into("<I", data, data.find(b"PK\x03\x04") + 22, 100)  # local header: uncompressed size
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, 100)  # central directory: the same
    return bytes(data)


def corrupt_deflate() -> bytes:
    data = bytearray(zip_of({"a.txt": "Рост доходов населения. ".encode() * 200}))
    start = data.find(b"PK\x03\x04") + 30 + len("a.txt")
    data[start + 10 : start + 40] = b"\xff" * 30
    return bytes(data)


def upload(name: str, data: bytes) -> dict:
    return {"files": {"file": (name, data)}}


def pair(txt: bytes, ann: bytes) -> dict:
    return {"files": {"txt": ("d.txt", txt), "ann": ("d.ann", ann)}}


def given_entities(*entities: tuple[str, str, int, int], text: str = "Рост доходов") -> dict:
    return {
        "json": {
            "text": text,
            "entities": [dict(zip(("id", "type", "start", "end"), e, strict=True)) for e in entities],
        }
    }


def ten_mb_declared() -> Iterator[bytes]:
    yield request_head(
        "POST", "/extract", {"Content-Type": "application/json", "Content-Length": str(TEN_MB)}
    )
    yield from (b"a" * 65536 for _ in range(TEN_MB // 65536 + 1))


def ten_mb_chunked() -> Iterator[bytes]:
    yield request_head(
        "POST", "/extract", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    )
    yield from (b"10000\r\n" + b"a" * 65536 + b"\r\n" for _ in range(TEN_MB // 65536 + 1))
    yield b"0\r\n\r\n"


def slow_body() -> Iterator[bytes]:
    """A declared body of 200 bytes, one byte every half second: it would take 100 s."""
    yield request_head("POST", "/extract", {"Content-Type": "application/json", "Content-Length": "200"})
    yield from (b" " for _ in range(200))


def slow_head() -> Iterator[bytes]:
    """The request line and headers one byte every half second."""
    head = request_head("POST", "/extract", {"Content-Type": "application/json", "Content-Length": "2"})
    yield from (head[i : i + 1] for i in range(len(head)))


def not_fully_read(answer: Answer) -> None:
    assert answer.sent < TEN_MB, f"the client got to send all {answer.sent:,} bytes"


def cut_off_in_time(answer: Answer) -> None:
    assert READ_TIMEOUT_S - 0.5 < answer.seconds < READ_TIMEOUT_S + 5, answer.seconds


def has_error_id(answer: Answer) -> None:
    assert ERROR_ID.match(answer.json()["error_id"] or ""), answer.json()


JSON = {"Content-Type": "application/json"}
CASES = [
    Case("malformed JSON", post("/extract", content=b"{not json", headers=JSON), 422, "ValidationError"),
    Case("schema violation", post("/extract", json={"txt": "x"}), 422, "ValidationError", "text"),
    Case("binary garbage as JSON", post("/extract", content=GARBAGE, headers=JSON), 422, "ValidationError"),
    Case(
        "wrong content type",
        post("/extract", content=b"text", headers={"Content-Type": "text/plain"}),
        415,
        "UnsupportedMediaType",
        "application/json",
    ),
    # An ordinary client sends the whole body before it reads: it must still get the 413, not a reset.
    Case(
        "5 MB body, sent whole",
        post("/extract", json={"text": "а" * 2_500_000}),
        413,
        "PayloadTooLarge",
        "300,000",
    ),
    Case("10 MB body, length declared", raw(ten_mb_declared), 413, "PayloadTooLarge", "", not_fully_read),
    Case("10 MB body, chunked", raw(ten_mb_chunked), 413, "PayloadTooLarge", "", not_fully_read),
    Case(
        "slow body, slow loris",
        raw(slow_body, 0.5),
        408,
        "ReadTimeout",
        f"{READ_TIMEOUT_S} s",
        cut_off_in_time,
    ),
    Case("slow request head", raw(slow_head, 0.5), 408, "ReadTimeout", "", cut_off_in_time),
    Case(
        "cp1251 upload",
        post("/extract/brat", **upload("a.txt", "Рост доходов".encode("cp1251"))),
        400,
        "BadEncoding",
        "a.txt: not UTF-8",
    ),
    Case(
        "UTF-16 upload",
        post("/extract/brat", **upload("a.txt", "Рост".encode("utf-16"))),
        400,
        "BadEncoding",
        "a.txt: not UTF-8",
    ),
    Case(
        "binary garbage as .txt",
        post("/extract/brat", **upload("a.txt", GARBAGE)),
        400,
        "BadEncoding",
        "a.txt",
    ),
    Case(
        "binary garbage to the brat tagger",
        post("/brat/tagger", content=GARBAGE, headers={"Content-Type": "text/plain"}),
        400,
        "BadEncoding",
        "request body",
    ),
    Case(
        "not a .txt",
        post("/extract/brat", **upload("a.pdf", b"%PDF-1.4")),
        415,
        "UnsupportedMediaType",
        "a.pdf",
    ),
    Case(
        "not a zip",
        post("/extract/brat", **upload("a.zip", GARBAGE)),
        400,
        "InputError",
        "not a readable .zip",
    ),
    Case(
        "truncated zip",
        post("/extract/brat", **upload("a.zip", zip_of({"a.txt": b"x" * 1000})[:-30])),
        400,
        "InputError",
        "not a readable .zip",
    ),
    Case(
        "zip with corrupt data",
        post("/extract/brat", **upload("a.zip", corrupt_deflate())),
        400,
        "InputError",
        "a.txt: cannot be decompressed",
    ),
    Case(
        "zip with ../ paths",
        post("/extract/brat", **upload("a.zip", zip_of({"ok.txt": b"x", "../evil.txt": b"x"}))),
        400,
        "InputError",
        "../evil.txt: paths inside the zip must be relative",
    ),
    Case(
        "zip with an absolute path",
        post("/extract/brat", **upload("a.zip", zip_of({"/tmp/evil.txt": b"x"}))),
        400,
        "InputError",
        "/tmp/evil.txt",
    ),
    Case(
        "zip bomb",
        post("/extract/brat", **upload("a.zip", zip_of({"big.txt": b"a" * (LIMIT * 25)}))),
        400,
        "InputError",
        "expands past",
    ),
    Case(
        "zip bomb with forged sizes",
        post("/extract/brat", **upload("a.zip", forged_zip_bomb())),
        400,
        "InputError",
        "big.txt: cannot be decompressed",
    ),
    Case(
        "zip with too many files",
        post("/extract/brat", **upload("a.zip", zip_of({f"{i}.txt": b"" for i in range(1001)}))),
        400,
        "InputError",
        "1001 files",
    ),
    Case(
        "zip compressed with bzip2",
        post("/extract/brat", **upload("a.zip", zip_of({"a.txt": b"x" * 100}, zipfile.ZIP_BZIP2))),
        400,
        "InputError",
        "a.txt: only unencrypted members, stored or deflated",
    ),
    Case(
        "entity outside the text",
        post("/relations", **given_entities(("T1", "CMP", 0, 99))),
        422,
        "InvalidEntities",
        "T1",
    ),
    Case(
        "unknown entity type",
        post("/relations", **given_entities(("T1", "XYZ", 0, 4))),
        422,
        "InvalidEntities",
        "'XYZ'",
    ),
    Case(
        "overlapping entities",
        post("/relations", **given_entities(("T1", "CMP", 0, 4), ("T2", "MET", 2, 12))),
        422,
        "InvalidEntities",
        "T1 and T2 overlap",
    ),
    Case(
        "repeated entity id",
        post("/relations", **given_entities(("T1", "CMP", 0, 4), ("T1", "MET", 5, 12))),
        422,
        "InvalidEntities",
        "entity T1: the id is used twice",
    ),
    Case(
        "dangling relation id in .ann",
        post(
            "/relations/brat",
            **pair("Рост".encode(), "T1\tCMP 0 4\tРост\nR1\tNPS Arg1:T1 Arg2:T5\n".encode()),
        ),
        422,
        "BratFormatError",
        "relation R1 refers to unknown entity 'T5'",
    ),
    Case(
        "malformed .ann line",
        post("/relations/brat", **pair("Рост".encode(), b"T1\tCMP 0\n")),
        422,
        "BratFormatError",
        "d.ann, line 1",
    ),
    Case(
        "binary garbage as .ann", post("/relations/brat", **pair(b"x", GARBAGE)), 400, "BadEncoding", "d.ann"
    ),
    Case("unknown path", post("/nowhere", json={}), 404, "NotFound", "POST /nowhere"),
    Case("wrong method", get("/extract"), 405, "MethodNotAllowed", "GET /extract"),
    Case(
        "inference fails on this request",
        post("/extract", json={"text": "Рост"}, headers={"X-Renersans-Fault": "error"}),
        503,
        "InferenceError",
        "error id",
        has_error_id,
    ),
    Case(
        "a bug of ours",
        post("/extract", json={"text": "Рост"}, headers={"X-Renersans-Fault": "crash"}),
        500,
        "InternalError",
        "error id",
        has_error_id,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(server: str, case: Case) -> None:
    answer = case.send(server)
    assert answer.status == case.status, answer.body[:500]
    body = answer.json()
    assert set(body) == {"error", "detail", "error_id"}, body
    assert body["error"] == case.error and body["detail"], body
    assert case.detail in body["detail"], body["detail"]
    if case.check:
        case.check(answer)
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200


# The errors that need a server configured otherwise than the shared one, and the tests that show them.
ELSEWHERE = {
    "Unauthorized": "test_api_key_guards_every_document_endpoint",
    "BundleError": "test_broken_bundle_with_wait_keeps_ready_false",
    "Overloaded": "test_concurrency_limit_queues_then_refuses",
    "ProcessingTimeout": "test_request_timeout_answers_504_and_frees_the_slot",
    "ShuttingDown": "test_sigterm_past_the_grace_period_exits_on_time",
}


def error_names() -> set[str]:
    def subclasses(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in {sub, *subclasses(sub)}}

    return {c.__name__ for c in subclasses(errors.RenersansError)}


def test_every_error_the_service_defines_is_shown() -> None:
    shown = {c.error for c in CASES} | set(ELSEWHERE)
    assert error_names() <= shown, f"no test shows {sorted(error_names() - shown)}"
    assert all(callable(globals().get(name)) for name in ELSEWHERE.values())


def test_docs_table_names_tests_that_exist() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_\w+)`", doc))
    assert len(named) > 10, "docs/reliability.md names the tests that show each row"
    known = {
        name
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert named <= known, f"docs/reliability.md names tests that do not exist: {sorted(named - known)}"
    cases = {
        name
        for group in re.findall(r"`test_bad_input` \(([^)]*)\)", doc)
        for name in re.findall(r"`([^`]+)`", group)
    }
    assert cases <= {c.name for c in CASES}, (
        f"no such bad-input cases: {sorted(cases - {c.name for c in CASES})}"
    )
    missing = {name for name in error_names() if f"`{name}`" not in doc}
    assert not missing, f"docs/reliability.md does not mention {sorted(missing)}"


# ---- zips: nothing written, nothing crashes ---------------------------------------------------------------


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_zips_are_read_in_memory_and_nothing_is_written(served: Served) -> None:
    """The server runs in `root/work` with TMPDIR `root/spool`: after zips with escaping paths (which a
    naive extraction would write to `root/evil.*`), nothing outside the temp dir has changed."""
    before = {k: v for k, v in files_under(served.root).items() if not k.startswith("spool")}
    archives = [
        zip_of({"a/ok.txt": "Рост доходов".encode(), "../evil.txt": b"x"}),
        zip_of({"../../evil.txt": b"x"}),
        zip_of({"/tmp/renersans-evil.txt": b"x"}),
        zip_of({"a/b/ok.txt": "Рост доходов".encode()}),
    ]
    statuses = [
        httpx.post(f"{served.url}/extract/brat", files={"file": ("z.zip", a)}, timeout=60).status_code
        for a in archives
    ]
    assert statuses == [400, 400, 400, 200]
    after = {k: v for k, v in files_under(served.root).items() if not k.startswith("spool")}
    assert after == before
    assert not list(served.root.parent.glob("evil*")) and not Path("/tmp/renersans-evil.txt").exists()


# ---- slow clients -----------------------------------------------------------------------------------------


def test_slow_clients_are_cut_off_and_the_server_stays_healthy(server: str, corpus_text: str) -> None:
    """Twenty slow heads and twenty slow bodies at once: meanwhile probes and real requests are answered
    promptly, and every slow client is cut off within the read timeout."""
    answers: list[Answer] = []

    def slow(chunks: Callable[[], Iterable[bytes]]) -> None:
        answers.append(send_raw(server, chunks(), pause_s=0.5, timeout_s=READ_TIMEOUT_S + 20))

    threads = [threading.Thread(target=slow, args=(c,)) for c in [slow_head, slow_body] * 20]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for _ in range(3):
        started = time.monotonic()
        assert httpx.get(f"{server}/health", timeout=5).status_code == 200
        r = httpx.post(f"{server}/extract", json={"text": corpus_text}, timeout=30)
        assert r.status_code == 200
        check_offsets(corpus_text, r.json())
        assert time.monotonic() - started < 5
    for t in threads:
        t.join(timeout=READ_TIMEOUT_S + 30)
    assert len(answers) == 40
    assert {a.status for a in answers} == {408}
    assert max(a.seconds for a in answers) < READ_TIMEOUT_S + 5


def test_idle_connections_are_closed(server: str) -> None:
    answer = send_raw(server, [], timeout_s=READ_TIMEOUT_S + 10)  # connect, send nothing
    assert answer.status is None and answer.seconds < READ_TIMEOUT_S + 3


def test_connections_past_the_limit_are_refused_at_once(tiny_bundle: Path) -> None:
    """A request that arrives while `RENERSANS_MAX_CONNECTIONS` connections are open, idle ones and its own
    included, is answered 503 `Overloaded` at once, in the service's JSON, with CORS headers for a configured
    origin, and its connection closed; once others close, requests are served."""
    origin = "https://tagger.example.org"
    server = start(tiny_bundle, RENERSANS_MAX_CONNECTIONS="4", RENERSANS_CORS_ORIGINS=origin)
    url = server.url
    parts = urlsplit(url)
    idle: list[socket.socket] = []
    try:
        server.wait_ready()
        idle += [socket.create_connection((parts.hostname, parts.port)) for _ in range(2)]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # 3 open of 4
        idle.append(socket.create_connection((parts.hostname, parts.port)))
        started = time.monotonic()
        refused = httpx.get(f"{url}/health", headers={"Origin": origin}, timeout=5)  # 4 open of 4
        assert refused.status_code == 503 and time.monotonic() - started < 2
        # A browser may read the refusal and its Retry-After.
        assert refused.headers["access-control-allow-origin"] == origin
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
        assert (
            refused.json()["error"] == "Overloaded"
            and "RENERSANS_MAX_CONNECTIONS" in refused.json()["detail"]
        )
        assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
        for s in idle:
            s.close()
        idle.clear()
        freed = lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200  # noqa: E731
        wait_for(freed, what="the limit to free up")
        assert httpx.post(f"{url}/extract", json={"text": "Рост доходов"}, timeout=30).status_code == 200
    finally:
        for s in idle:
            s.close()
        server.stop()


# ---- concurrency and request time -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tiny_bundle: Path) -> Iterator[str]:
    """A server that runs one model request at a time, queues one more, and answers within 3 s."""
    with serve(
        tiny_bundle,
        RENERSANS_MAX_CONCURRENCY="1",
        RENERSANS_MAX_QUEUE="1",
        RENERSANS_REQUEST_TIMEOUT_S="3",
        RENERSANS_FAULT_INJECTION="true",
    ) as server:
        yield server.url


def slow_extract(url: str, seconds: float) -> httpx.Response:
    headers = {"X-Renersans-Fault": f"delay={seconds}"} if seconds else {}
    return httpx.post(f"{url}/extract", json={"text": "Рост доходов"}, headers=headers, timeout=60)


@contextmanager
def slot_and_queue_taken(url: str, hold_s: float) -> Iterator[None]:
    """The one model slot busy for `hold_s` seconds and the one queue place taken (`limited`); both of
    those requests are answered 200 in the end."""
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(slow_extract, url, hold_s)
        wait_for(lambda: metric(url, "renersans_in_flight") == 1, what="the first request to run")
        queued = pool.submit(slow_extract, url, 0)
        wait_for(lambda: metric(url, "renersans_queued") == 1, what="the second request to queue")
        yield
        assert running.result().status_code == 200 and queued.result().status_code == 200


def test_concurrency_limit_queues_then_refuses(limited: str) -> None:
    with slot_and_queue_taken(limited, 1.5):
        started = time.monotonic()
        refused = slow_extract(limited, 0)
        assert time.monotonic() - started < 1, "refused at once, not after waiting"
        assert httpx.get(f"{limited}/health", timeout=2).status_code == 200
    assert refused.status_code == 503 and refused.json()["error"] == "Overloaded"
    # Whole seconds, estimated from the queue (tests/test_reliability.py checks the estimate), at most the
    # request timeout (3 s here).
    assert 1 <= int(refused.headers["retry-after"]) <= 3


def test_request_timeout_answers_504_and_frees_the_slot(limited: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        stuck = pool.submit(slow_extract, limited, 5)
        wait_for(lambda: metric(limited, "renersans_in_flight") == 1, what="the slow request to run")
        waiting = pool.submit(slow_extract, limited, 0)
        stuck, waiting = stuck.result(), waiting.result()
    assert 3 <= time.monotonic() - started < 5, "answered at the timeout, not when the work ended"
    assert stuck.status_code == 504 and "not answered within 3 s" in stuck.json()["detail"]
    assert waiting.status_code == 504 and "waiting for a free model slot" in waiting.json()["detail"]
    # The abandoned work still holds its slot until it ends; then the slot is free again.
    wait_for(lambda: metric(limited, "renersans_in_flight") == 0, timeout=10, what="the slot to be freed")
    assert slow_extract(limited, 0).status_code == 200


# ---- faults -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server that merges concurrent requests' encoder rows into shared batches (fp32, whose answers do
    not depend on batch mates), with fault injection."""
    with serve(
        tiny_bundle,
        RENERSANS_BATCH_WAIT_MS="50",
        RENERSANS_VARIANT="fp32",
        RENERSANS_FAULT_INJECTION="true",
    ) as server:
        yield Served(server.url, tmp_path_factory.mktemp("batching"), server.log)


@pytest.mark.parametrize("server_kind", ["served", "batching"], ids=["alone", "cross-request batching"])
def test_inference_error_fails_only_that_request(
    server_kind: str, request: pytest.FixtureRequest, corpus_text: str
) -> None:
    """One request's inference fails for real in ONNX Runtime while seven others run beside it (with
    cross-request batching, in the same encoder batches): it gets a 503 with an error id that the log has
    with the runtime's message; the others get exactly the answer they get alone."""
    served: Served = request.getfixturevalue(server_kind)
    alone = httpx.post(f"{served.url}/extract", json={"text": corpus_text}, timeout=60).json()
    assert alone["entities"], "the tiny model finds entities in corpus text"

    def call(fault: str) -> httpx.Response:
        headers = {"X-Renersans-Fault": fault}
        return httpx.post(f"{served.url}/extract", json={"text": corpus_text}, headers=headers, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        # All wait half a second, so that they run on the models at the same time.
        faults = ["delay=0.5"] * 3 + ["delay=0.5,error"] + ["delay=0.5"] * 4
        answers = list(pool.map(call, faults))
    failed = answers.pop(3)
    assert failed.status_code == 503 and failed.json()["error"] == "InferenceError"
    error_id = failed.json()["error_id"]
    assert ERROR_ID.match(error_id)
    logged = [json.loads(line) for line in served.log.read_text().splitlines() if error_id in line]
    # ONNX Runtime's own words: fused embedding (int8, fp16) or a plain Gather (fp32).
    assert logged and re.search(r"index out of range|out of data bounds", logged[0]["exception"])
    for r in answers:
        assert r.status_code == 200
        assert (r.json()["entities"], r.json()["relations"]) == (alone["entities"], alone["relations"])
    assert call("delay=0").status_code == 200


def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> tuple[Path, Manifest, Path]:
    """A copy of the tiny bundle, its manifest, and the ONNX file the service loads first on a CPU."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = read_manifest(bundle)
    variant = str(manifest.default_for("cpu", "ner"))
    return bundle, manifest, bundle / str(manifest.models["ner"].variants[variant].file)


def break_bundle(kind: str, tiny_bundle: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """(bundle, the file the message must name, a phrase it must contain)."""
    if kind == "missing":
        return tmp_path / "nowhere", tmp_path / "nowhere" / "manifest.json", "no manifest"
    bundle, manifest, onnx = bundle_copy(tiny_bundle, tmp_path)
    if kind == "manifest not JSON":
        (bundle / "manifest.json").write_text("{", encoding="utf-8")
        return bundle, bundle / "manifest.json", "not valid JSON"
    if kind == "ONNX file replaced":
        onnx.write_bytes(onnx.read_bytes()[:-100])
        return bundle, onnx, "checksum differs"
    if kind == "ONNX file corrupt":  # with a matching checksum: only ONNX Runtime can tell
        onnx.write_bytes(GARBAGE)
        for name, variant in manifest.models["ner"].variants.items():
            if bundle / str(variant.file) == onnx:
                manifest = manifest.with_variant("ner", name, replace(variant, sha256=sha256(onnx)))
        write_manifest(bundle, manifest)
        return bundle, onnx, "ONNX Runtime cannot load it"
    assert kind == "tokenizer corrupt"
    tokenizer = bundle / manifest.models["ner"].tokenizer
    tokenizer.write_text('{"version": "1.0"}', encoding="utf-8")
    return bundle, tokenizer, "not a tokenizer.json"


BROKEN = ["missing", "manifest not JSON", "ONNX file replaced", "ONNX file corrupt", "tokenizer corrupt"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_bundle_exits_naming_the_file(kind: str, tiny_bundle: Path, tmp_path: Path) -> None:
    bundle, named, phrase = break_bundle(kind, tiny_bundle, tmp_path)
    server = start(bundle)
    assert server.process.wait(timeout=60) != 0
    log = server.output()
    assert str(named) in log and phrase in log, log[-2000:]


def test_broken_bundle_with_wait_keeps_ready_false(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle, named, phrase = break_bundle("ONNX file corrupt", tiny_bundle, tmp_path)
    server = start(bundle, RENERSANS_WAIT_FOR_BUNDLE="true")
    url = server.url
    try:
        r = server.wait_started()
        assert r.status_code == 503 and str(named) in r.json()["reason"] and phrase in r.json()["reason"]
        assert httpx.get(f"{url}/health").status_code == 200
        refused = httpx.post(f"{url}/extract", json={"text": "x"})
        assert refused.status_code == 503 and refused.json()["error"] == "BundleError"
        assert str(named) in refused.json()["detail"]
    finally:
        server.stop()


CUDA_ABSENT = pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="this onnxruntime has the CUDA provider: the fallback cannot be shown here",
)


@CUDA_ABSENT
def test_gpu_requested_but_absent_falls_back_to_cpu(tiny_bundle: Path) -> None:
    with serve(tiny_bundle, RENERSANS_DEVICE="cuda") as server:
        url = server.url
        assert httpx.get(f"{url}/version").json()["model"]["providers"] == {
            "ner": "CPUExecutionProvider",
            "re": "CPUExecutionProvider",
        }
        warnings = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        assert any(w["level"] == "WARNING" and "CUDA was requested" in w["message"] for w in warnings)
        # Fault injection is off unless configured: the header is ignored.
        r = httpx.post(f"{url}/extract", json={"text": "Рост"}, headers={"X-Renersans-Fault": "error"})
        assert r.status_code == 200


@CUDA_ABSENT
def test_gpu_required_but_absent_is_not_ready(tiny_bundle: Path) -> None:
    server = start(tiny_bundle, RENERSANS_DEVICE="cuda", RENERSANS_REQUIRE_GPU="true")
    url = server.url
    try:
        r = server.wait_started()
        assert r.status_code == 503 and "GPU is required" in r.json()["reason"]
        assert httpx.get(f"{url}/version").json()["model"]["providers"]["ner"] == "CPUExecutionProvider"
    finally:
        server.stop()


def in_flight_then_sigterm(proc, url: str, delay: float) -> tuple[dict, threading.Thread, float]:
    """A request that takes `delay` seconds on the models, and SIGTERM once it is running."""
    result: dict = {}

    def call() -> None:
        try:
            headers = {"X-Renersans-Fault": f"delay={delay}"}
            result["r"] = httpx.post(
                f"{url}/extract", json={"text": "Рост доходов"}, headers=headers, timeout=60
            )
        except httpx.TransportError as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: metric(url, "renersans_in_flight") == 1, what="the request to run")
    proc.send_signal(signal.SIGTERM)
    return result, thread, time.monotonic()


def refused(url: str) -> bool:
    """No answer: the connection refused, or (accepted just before the listener closed) closed unanswered."""
    try:
        httpx.get(f"{url}/health", timeout=1)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False


def test_sigterm_drains_in_flight_requests(tiny_bundle: Path) -> None:
    with serve(tiny_bundle, "--grace", "20", RENERSANS_FAULT_INJECTION="true") as server:
        proc, url = server.process, server.url
        result, thread, signalled = in_flight_then_sigterm(proc, url, 2)
        wait_for(lambda: refused(url), timeout=2, what="new connections to be refused")
        assert thread.is_alive(), "refused while the in-flight request was still running"
        proc.wait(timeout=20)
        thread.join()
        # uvicorn re-raises the SIGTERM it handled once drained: killed by the signal, or 0.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 10, "exited when drained, not at the end of the grace period"
        assert result["r"].status_code == 200 and "entities" in result["r"].json()


def test_sigterm_past_the_grace_period_exits_on_time(tiny_bundle: Path) -> None:
    with serve(tiny_bundle, "--grace", "2", RENERSANS_FAULT_INJECTION="true") as server:
        proc, url = server.process, server.url
        result, thread, signalled = in_flight_then_sigterm(proc, url, 30)
        proc.wait(timeout=20)
        assert time.monotonic() - signalled < 2 + 3, "exited at the end of the grace period"
        assert proc.returncode == 1 and "unfinished after the grace period" in server.output()
        thread.join(timeout=10)
        assert result["r"].status_code == 503 and result["r"].json()["error"] == "ShuttingDown"


# ---- who may call -----------------------------------------------------------------------------------------

KEY = "s3cret-ключ"  # non-ASCII on purpose: clients send it as UTF-8


def uses_models(dependant: Dependant) -> bool:
    return any(d.call is deps.extractor or uses_models(d) for d in dependant.dependencies)


def documented_example(schema: dict, where: str) -> Any:
    assert "examples" in schema, f"{where}: document an example request (examples=[...]): the tests send it"
    return schema["examples"][0]


def model_requests() -> dict[str, dict]:
    """A valid request to each endpoint that runs the models: the example its route documents at /docs (a
    JSON body's model, each upload or a text body), so that a new endpoint needs nothing here."""
    schema = create_app(Settings(_env_file=None, bundle=Path("/nonexistent"))).openapi()
    found = {}
    for route in (r for r in api_routes() if uses_models(r.dependant)):
        ((kind, body),) = schema["paths"][route.path]["post"]["requestBody"]["content"].items()
        fields = body["schema"]
        if "$ref" in fields:
            fields = schema["components"]["schemas"][fields["$ref"].rsplit("/", 1)[1]]
        if kind == "application/json":
            found[route.path] = {"json": documented_example(fields, route.path)}
        elif kind == "multipart/form-data":
            # Named .txt: uploads are read by their content, but /extract/brat takes a .txt or a .zip.
            files = {
                name: (f"{name}.txt", documented_example(field, f"{route.path} {name}").encode())
                for name, field in fields["properties"].items()
            }
            found[route.path] = {"files": files}
        else:
            example = documented_example(fields, route.path).encode()
            found[route.path] = {"content": example, "headers": {"Content-Type": kind}}
    return found


MODEL_REQUESTS = model_requests()
ORIGIN = "https://tagger.example.org"


@pytest.fixture(scope="module")
def guarded(tiny_bundle: Path) -> Iterator[str]:
    with serve(tiny_bundle, RENERSANS_API_KEY=KEY, RENERSANS_CORS_ORIGINS=ORIGIN) as server:
        yield server.url


def with_key(key: str | None = KEY, **headers: str) -> dict:
    return {**headers, **({"X-API-Key": key.encode()} if key is not None else {})}


def test_api_key_guards_every_document_endpoint(guarded: str) -> None:
    schema = httpx.get(f"{guarded}/openapi.json").json()
    posts = [path for path, ops in schema["paths"].items() if "post" in ops]
    assert set(posts) >= set(MODEL_REQUESTS)
    for path in posts:
        for key in (None, "", "wrong", KEY[:-1], KEY + "x", KEY[:-1] + "x", KEY.upper()):
            r = httpx.post(f"{guarded}{path}", content=b"{}", headers=with_key(key))
            assert r.status_code == 401, (path, key, r.text)
            assert r.json()["error"] == "Unauthorized" and "X-API-Key" in r.json()["detail"]
    ok = httpx.post(f"{guarded}/extract", json={"text": "Рост доходов"}, headers=with_key())
    assert ok.status_code == 200
    for path in ("/health", "/ready", "/metrics", "/version", "/openapi.json", "/docs"):
        assert httpx.get(f"{guarded}{path}").status_code == 200, path
    (scheme,) = schema["components"]["securitySchemes"].values()
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": scheme["description"],
    }


def test_cors_only_for_configured_origins(guarded: str, server: str) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    ok = httpx.options(f"{guarded}/extract", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    other = httpx.options(f"{guarded}/extract", headers={"Origin": "https://evil.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

    text = {"text": "Рост доходов"}
    r = httpx.post(f"{guarded}/extract", json=text, headers=with_key(Origin=ORIGIN))
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    # Refusals carry the header too, so that a browser client can read why.
    r = httpx.post(f"{guarded}/extract", json=text, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    big = request_head("POST", "/extract", {"Origin": ORIGIN, "Content-Length": str(TEN_MB), **JSON})
    answer = send_raw(guarded, [big])
    assert answer.status == 413 and answer.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.post(f"{guarded}/extract", json=text, headers=with_key(Origin="https://evil.example"))
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # Without configured origins, no CORS at all.
    r = httpx.options(f"{server}/extract", headers={"Origin": ORIGIN, **preflight})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(f"{server}/extract", json=text, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_every_model_endpoint_is_behind_the_limits(limited: str) -> None:
    """With the one slot busy and the one queue place taken, a valid request to any endpoint that runs the
    models is refused at once (503), while bad requests and requests that need no model are still
    answered at once: only requests that passed every check wait for the models."""
    known = {"/extract", "/extract/brat", "/relations", "/relations/brat", "/brat/tagger"}
    assert set(MODEL_REQUESTS) >= known, "every endpoint that runs the models documents an example"
    with slot_and_queue_taken(limited, 2):
        started = time.monotonic()
        for path, kwargs in MODEL_REQUESTS.items():
            r = httpx.post(f"{limited}{path}", timeout=10, **kwargs)
            assert r.status_code == 503 and r.json()["error"] == "Overloaded", (path, r.text)
            assert 1 <= int(r.headers["retry-after"]) <= 3
        refused_at_once = {
            "wrong content type",
            "schema violation",
            "cp1251 upload",
            "zip with ../ paths",
            "entity outside the text",
            "overlapping entities",
            "dangling relation id in .ann",
            "binary garbage to the brat tagger",
        }
        for case in CASES:
            if case.name in refused_at_once:
                assert case.send(limited).status == case.status, case.name
        parsed = httpx.post(f"{limited}/brat/parse", files={"txt": ("d.txt", b"x")}, timeout=10)
        assert parsed.status_code == 200
        assert time.monotonic() - started < 1.5, "none of these waited for the models"
