"""The service as users meet it: a real uvicorn process on 127.0.0.1 serving a real ONNX bundle. Bad
input, limits, faults and access: tests/test_server_reliability.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main
from app.metric import evaluate
from app.text.brat import parse_ann, read_corpus
from bench.server import serve


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
    # Exact matching counts every gold and every served entity once (the official sweep can skip a gold
    # entity in one branch, so its counts depend on what the model predicts).
    report = evaluate(docs, served, "ner")
    assert report.exact.tp + report.exact.fn == sum(len(d.entities) for d in docs)
    assert report.exact.tp + report.exact.fp == sum(len(d.entities) for d in served.values())


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


DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.mark.skipif(
    not (DEFAULT / "manifest.json").exists(), reason="models/default has not been exported yet"
)
def test_default_bundle_serves_real_predictions(corpus_dir: Path) -> None:
    """The README's first command serves models/default: real entities on a real corpus paragraph."""
    doc = read_corpus(corpus_dir / "train_part_2")[0]
    # 6,000 characters: the first 3,000 hold only 3 gold relations, too few to expect one found.
    text = doc.text[:6000]
    with serve(DEFAULT, ready_s=120) as server:
        body = httpx.post(f"{server.url}/extract", json={"text": text}, timeout=120).json()
        assert len(body["entities"]) >= 10
        assert body["relations"]
        for e in body["entities"]:
            assert text[e["start"] : e["end"]] == e["text"]
