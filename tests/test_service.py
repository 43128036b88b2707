"""The service as users meet it: a real uvicorn process on 127.0.0.1 serving a real ONNX bundle."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main
from app.metric import evaluate
from app.text.brat import parse_ann, read_corpus

LIMIT = 300_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`renersans serve` on a free port; its log goes to a file (a pipe nobody reads would fill and block
    the server), readable as `proc.log_path`."""
    port = free_port()
    environ = {**os.environ, "RENERSANS_BUNDLE": str(bundle), **env}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    proc.log_path = Path(log.name)
    return proc, f"http://127.0.0.1:{port}"


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {output(proc)}")
        try:
            r = httpx.get(f"{url}/ready", timeout=2)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    proc, url = start(tiny_bundle, RENERSANS_MAX_REQUEST_BYTES=str(LIMIT))
    try:
        wait_ready(proc, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def sample(tiny_checkpoints: tuple[Path, Path, Path]) -> str:
    """A real corpus passage with CRLF, a tab, an emoji and `ё` mixed in."""
    corpus = tiny_checkpoints[0]
    text = read_corpus(corpus)[1].text
    return "😀 Отчёт\r\n" + text.replace("\n", "\r\n", 3).replace(" ", "\t", 2) + " ёж 👍🏽"


def test_extract_offsets_index_the_text_as_sent(server: str, sample: str) -> None:
    r = httpx.post(f"{server}/extract", json={"text": sample}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["entities"], "the tiny model finds entities in corpus text"
    for e in body["entities"]:
        assert sample[e["start"] : e["end"]] == e["text"]
    ids = {e["id"] for e in body["entities"]}
    assert all(rel["arg1"] in ids and rel["arg2"] in ids for rel in body["relations"])
    assert set(body["timings_ms"]) == {"segmentation", "ner", "relations", "decoding"}
    assert body["model"]["providers"]["ner"] == "CPUExecutionProvider"

    brat = httpx.post(f"{server}/extract?format=brat", json={"text": sample}, timeout=60)
    by_accept = httpx.post(
        f"{server}/extract", json={"text": sample}, headers={"Accept": "text/plain"}, timeout=60
    )
    assert brat.text == by_accept.text
    doc = parse_ann(brat.text, sample)  # offsets and texts checked against the text by the reader
    assert [(e.id, e.type, e.start, e.end) for e in doc.entities] == [
        (e["id"], e["type"], e["start"], e["end"]) for e in body["entities"]
    ]


def test_empty_text_gives_empty_lists(server: str) -> None:
    for text in ("", "  \r\n\t "):
        r = httpx.post(f"{server}/extract", json={"text": text})
        assert r.status_code == 200
        assert (r.json()["entities"], r.json()["relations"]) == ([], [])


def test_brat_upload_single_and_zip(
    server: str, tiny_checkpoints: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    corpus = tiny_checkpoints[0]
    docs = read_corpus(corpus)
    one = docs[0]
    r = httpx.post(f"{server}/extract/brat", files={"file": ("report 1.txt", one.text.encode())}, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="report_1.ann"'
    parse_ann(r.text, one.text)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for d in docs:
            z.writestr(f"batch/{d.name}.txt", d.text)
        z.writestr("batch/readme.md", "ignored")
    r = httpx.post(f"{server}/extract/brat", files={"file": ("batch.zip", buf.getvalue())}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    out = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(out.namelist()) == sorted(f"batch/{d.name}.ann" for d in docs)

    # The service's .ann files score with the official metric against the gold, and equal `annotate`'s.
    served = {d.name: parse_ann(out.read(f"batch/{d.name}.ann").decode(), d.text) for d in docs}
    report = evaluate(docs, served, "ner")
    assert report.micro.tp + report.micro.fn == sum(len(d.entities) for d in docs)


def test_service_equals_annotate(
    server: str, tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    corpus = tiny_checkpoints[0]
    assert main(["annotate", str(corpus), str(tmp_path / "out"), "--bundle", str(tiny_bundle)]) == 0
    for d in read_corpus(corpus):
        served = httpx.post(f"{server}/extract?format=brat", json={"text": d.text}, timeout=60).text
        assert (tmp_path / "out" / f"{d.name}.ann").read_text(encoding="utf-8") == served
    # Resumable: a second run skips everything already written.
    assert main(["annotate", str(corpus), str(tmp_path / "out"), "--bundle", str(tiny_bundle)]) == 0


def test_relations_for_given_entities(server: str, tiny_checkpoints: tuple[Path, Path, Path]) -> None:
    doc = read_corpus(tiny_checkpoints[0])[0]
    entities = [{"id": e.id, "type": e.type, "start": e.start, "end": e.end} for e in doc.entities]
    r = httpx.post(f"{server}/relations", json={"text": doc.text, "entities": entities}, timeout=60)
    assert r.status_code == 200, r.text
    ids = {e.id for e in doc.entities}
    assert all(rel["arg1"] in ids and rel["arg2"] in ids for rel in r.json()["relations"])

    ann = "".join(f"{e.id}\t{e.type} {e.start} {e.end}\t{e.text}\n" for e in doc.entities)
    files = {"txt": ("d.txt", doc.text.encode()), "ann": ("d.ann", ann.encode())}
    r = httpx.post(f"{server}/relations/brat", files=files, timeout=60)
    assert r.status_code == 200
    back = parse_ann(r.text, doc.text)
    assert [e.span for e in back.entities] == [e.span for e in doc.entities]


def test_brat_tagger_protocol(server: str, sample: str) -> None:
    r = httpx.post(f"{server}/brat/tagger", content=sample.encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    for ann in r.json().values():
        ((start, end),) = ann["offsets"]
        assert sample[start:end] == ann["texts"][0]


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


BAD_INPUT = [
    (
        "malformed JSON",
        "/extract",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        422,
        "ValidationError",
    ),
    ("schema violation", "/extract", {"json": {"txt": "x"}}, 422, "ValidationError"),
    (
        "wrong content type",
        "/extract",
        {"content": b"text", "headers": {"Content-Type": "text/plain"}},
        415,
        "UnsupportedMediaType",
    ),
    ("body too large", "/extract", {"json": {"text": "а" * LIMIT}}, 413, "PayloadTooLarge"),
    (
        "cp1251 upload",
        "/extract/brat",
        {"files": {"file": ("a.txt", "Рост доходов".encode("cp1251"))}},
        400,
        "BadEncoding",
    ),
    (
        "UTF-16 upload",
        "/extract/brat",
        {"files": {"file": ("a.txt", "Рост".encode("utf-16"))}},
        400,
        "BadEncoding",
    ),
    ("not a txt", "/extract/brat", {"files": {"file": ("a.pdf", b"%PDF-1.4")}}, 415, "UnsupportedMediaType"),
    (
        "binary zip garbage",
        "/extract/brat",
        {"files": {"file": ("a.zip", os.urandom(512))}},
        400,
        "InputError",
    ),
    (
        "zip with ../",
        "/extract/brat",
        {"files": {"file": ("a.zip", zip_of({"../evil.txt": b"x"}))}},
        400,
        "InputError",
    ),
    (
        "zip bomb",
        "/extract/brat",
        {"files": {"file": ("a.zip", zip_of({"big.txt": b"a" * (LIMIT * 25)}))}},
        400,
        "InputError",
    ),
    (
        "entity outside the text",
        "/relations",
        {"json": {"text": "Рост", "entities": [{"id": "T1", "type": "CMP", "start": 0, "end": 9}]}},
        422,
        "InvalidEntities",
    ),
    (
        "unknown entity type",
        "/relations",
        {"json": {"text": "Рост", "entities": [{"id": "T1", "type": "XYZ", "start": 0, "end": 4}]}},
        422,
        "InvalidEntities",
    ),
    (
        "dangling relation in .ann",
        "/relations/brat",
        {
            "files": {
                "txt": ("d.txt", "Рост".encode()),
                "ann": ("d.ann", b"T1\tCMP 0 4\t\xd0\xa0\xd0\xbe\xd1\x81\xd1\x82\nR1\tNPS Arg1:T1 Arg2:T5\n"),
            }
        },
        422,
        "BratFormatError",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "request_args", "status", "error"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input(server: str, name: str, path: str, request_args: dict, status: int, error: str) -> None:
    r = httpx.post(f"{server}{path}", timeout=60, **request_args)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert r.json()["detail"]
    assert httpx.get(f"{server}/health").status_code == 200


def test_dangling_relation_names_the_id(server: str) -> None:
    files = {
        "txt": ("d.txt", "Рост".encode()),
        "ann": ("d.ann", "T1\tCMP 0 4\tРост\nR1\tNPS Arg1:T1 Arg2:T5\n".encode()),
    }
    r = httpx.post(f"{server}/relations/brat", files=files)
    assert "'T5'" in r.json()["detail"]


def test_metrics_are_prometheus_text(server: str) -> None:
    httpx.post(f"{server}/extract", json={"text": "Рост доходов"})
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server}/metrics").text)}
    assert {
        "renersans_requests",
        "renersans_request_seconds",
        "renersans_stage_seconds",
        "renersans_model_info",
    } <= set(families)
    samples = families["renersans_requests"].samples
    assert any(s.labels == {"endpoint": "/extract", "status": "200"} and s.value >= 1 for s in samples)
    info = families["renersans_model_info"].samples[0].labels
    assert info["bundle"] == "tiny"


def test_version_and_ready(server: str) -> None:
    assert httpx.get(f"{server}/version").json()["model"]["variants"] == {"ner": "int8", "re": "int8"}
    assert httpx.get(f"{server}/ready").json()["ready"] is True


def test_missing_bundle_exits_naming_the_file(tmp_path: Path) -> None:
    proc, _ = start(tmp_path / "nowhere")
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert str(tmp_path / "nowhere" / "manifest.json") in output(proc)


def test_missing_bundle_with_wait_keeps_ready_false(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "nowhere", RENERSANS_WAIT_FOR_BUNDLE="true")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 503 and "manifest.json" in r.json()["reason"]
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/extract", json={"text": "x"}).status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_gpu_required_but_absent_is_not_ready(tiny_bundle: Path) -> None:
    proc, url = start(tiny_bundle, RENERSANS_DEVICE="cuda", RENERSANS_REQUIRE_GPU="true")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
                if r.status_code != 503 or r.json()["reason"] != "starting":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert r.status_code == 503 and "GPU is required" in r.json()["reason"]
        assert httpx.get(f"{url}/version").json()["model"]["providers"]["ner"] == "CPUExecutionProvider"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_default_bundle_serves_real_predictions(corpus_dir: Path) -> None:
    """The README's first command serves models/default: real entities on a real corpus paragraph."""
    doc = read_corpus(corpus_dir / "train_part_2")[0]
    text = doc.text[:3000]
    proc, url = start(DEFAULT)
    try:
        wait_ready(proc, url, timeout=120)
        body = httpx.post(f"{url}/extract", json={"text": text}, timeout=120).json()
        assert len(body["entities"]) >= 10
        assert body["relations"]
        for e in body["entities"]:
            assert text[e["start"] : e["end"]] == e["text"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_api_key_is_required_when_configured(tiny_bundle: Path) -> None:
    proc, url = start(tiny_bundle, RENERSANS_API_KEY="s3cret")
    try:
        wait_ready(proc, url)
        assert httpx.post(f"{url}/extract", json={"text": "Рост"}).status_code == 401
        ok = httpx.post(f"{url}/extract", json={"text": "Рост"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # probes stay open
    finally:
        proc.terminate()
        proc.wait(timeout=30)
