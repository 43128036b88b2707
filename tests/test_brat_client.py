"""brat as a real client of /brat/tagger: the request exactly as brat's tagger call sends it (nlplab/brat,
server/src/tag.py), to a real `renersans serve` on models/default, and brat's own checks on the answer."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.text.brat import read_corpus
from bench.server import serve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"


@pytest.fixture(scope="module")
def tagger_url() -> Iterator[str]:
    """The address a collection's tools.conf gives brat (README: `<URL>:http://HOST:8000/brat/tagger`). No
    API key: brat sends none."""
    if not (DEFAULT / "manifest.json").exists():
        pytest.skip("models/default has not been exported yet")
    with serve(DEFAULT, ready_s=120) as server:
        yield f"{server.url}/brat/tagger"


def brat_tags(url: str, text: str) -> dict:
    """brat's tagger call: one POST with http.client, the query left off the path (brat rebuilds it, and
    there is none here), its three headers with Content-length as an int; it needs status 200 and JSON."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        data = text.encode("utf-8")
        headers = {
            "Content-type": "text/plain; charset=utf-8",
            "Accept": "application/json",
            "Content-length": len(data),
        }
        conn.request("POST", parts.path, data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, f"brat refuses the tagger's answer: {resp.status} {resp.reason} {body[:300]!r}"
    return json.loads(body)


def test_brat_adds_what_the_tagger_returns(tagger_url: str, corpus_dir: Path) -> None:
    doc = max(read_corpus(corpus_dir / "train_part_1")[:20], key=lambda d: len(d.entities))
    # Two paragraphs of a corpus document with the line break between them, as brat sends a .txt's text.
    paragraphs = [p for p in doc.text.split("\n") if len(p) >= 200][:2]
    text = "\n".join(paragraphs)
    assert len(text) > 400, doc.name

    answer = brat_tags(tagger_url, text)

    assert answer, "the default model finds entities in a corpus paragraph"
    for ident, ann in answer.items():
        # brat's checks (tag.py), in its order, then the text-bound annotation it adds.
        assert "offsets" in ann, "Tagger response lacks offsets"
        assert "type" in ann, "Tagger response lacks type"
        assert "texts" in ann, "Tagger response lacks texts"
        offsets, texts = ann["offsets"], ann["texts"]
        assert len(offsets) == len(texts), "Tagger response has different numbers of offsets and texts"
        assert len(offsets) < 2, "Tagger response has multiple offsets"
        start, end = offsets[0]
        # brat keeps the offsets and writes texts[0] after them in the .ann: they must agree with the text.
        for (a, b), said in zip(offsets, texts, strict=True):
            assert isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(text), (ident, ann)
            assert text[a:b] == said, (ident, ann, text[a:b])
        assert isinstance(ann["type"], str) and ann["type"] and start < end, (ident, ann)
    # Both paragraphs are annotated, not only the first.
    assert max(ann["offsets"][0][0] for ann in answer.values()) > len(paragraphs[0]), answer
