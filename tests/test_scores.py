"""Scores, score bars, type selections and batches, on a real `renersans serve` of models/default (the tiny
test models find too few relations to test relation scores on) and corpus text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.text.brat import parse_ann, read_corpus
from bench.server import serve

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
BARS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """models/default, with fault injection so that one test can make the models fail (app/faults.py)."""
    with serve(DEFAULT, ready_s=180, RENERSANS_FAULT_INJECTION="true") as served:
        yield served.url


@pytest.fixture(scope="module")
def texts(corpus_dir: Path) -> list[str]:
    """The opening paragraphs (up to 1,200 characters, cut at a line break) of four corpus documents."""
    out = []
    for doc in read_corpus(corpus_dir / "train_part_1")[:4]:
        cut = doc.text.rfind("\n", 0, 1200)
        out.append(doc.text[: cut if cut > 300 else 1200])
    return out


def annotations(body: dict) -> tuple[list, list]:
    """An answer's annotations without their scores: a batch gives the same annotations as single requests,
    while scores may differ in the fourth decimal (other texts in a batch change its padding, and fp16 and
    int8 arithmetic follow the shapes)."""
    drop = lambda items: [{k: v for k, v in x.items() if k != "score"} for x in items]  # noqa: E731
    return drop(body["entities"]), drop(body["relations"])


def same_scores(a: dict, b: dict) -> bool:
    pairs = zip(a["entities"] + a["relations"], b["entities"] + b["relations"], strict=True)
    return all(abs(x["score"] - y["score"]) < 2e-3 for x, y in pairs)


def extract(server: str, text: str, **options: object) -> dict:
    r = httpx.post(f"{server}/extract", json={"text": text, **options}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_entity_and_relation_has_a_score_in_the_unit_interval(server: str, texts: list[str]) -> None:
    found = [extract(server, t) for t in texts]
    entities = [e for body in found for e in body["entities"]]
    relations = [r for body in found for r in body["relations"]]
    assert entities and relations, "the tiny models find entities and relations in corpus text"
    assert all(0.0 <= x["score"] <= 1.0 for x in entities + relations)
    # Not one constant: a score that says nothing would pass the range check.
    assert len({round(e["score"], 4) for e in entities}) > 1


def test_raising_a_bar_never_adds_an_annotation(server: str, texts: list[str]) -> None:
    full = extract(server, texts[0])
    previous = None
    for bar in BARS:
        body = extract(server, texts[0], min_entity_score=bar, min_relation_score=bar)
        kept = {e["id"]: e for e in body["entities"]}
        assert all(e["score"] >= bar for e in kept.values())
        # Exactly the full answer's entities at or above the bar, with the same ids.
        assert list(kept) == [e["id"] for e in full["entities"] if e["score"] >= bar]
        assert all(r["arg1"] in kept and r["arg2"] in kept for r in body["relations"])
        rels = {r["id"] for r in body["relations"]}
        if previous is not None:
            assert set(kept) <= previous[0] and rels <= previous[1]
        previous = (set(kept), rels)


def test_types_select_entities_and_the_relations_between_them(server: str, texts: list[str]) -> None:
    full = extract(server, texts[0])
    common = max({e["type"] for e in full["entities"]}, key=[e["type"] for e in full["entities"]].count)
    body = extract(server, texts[0], entity_types=[common], relation_types=["TSK", "PPS"])
    assert body["entities"] and {e["type"] for e in body["entities"]} == {common}
    kept = {e["id"] for e in body["entities"]}
    expected = [
        r["id"]
        for r in full["relations"]
        if r["type"] in ("TSK", "PPS") and r["arg1"] in kept and r["arg2"] in kept
    ]
    assert [r["id"] for r in body["relations"]] == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [({"entity_types": ["MET", "FOO"]}, "FOO"), ({"relation_types": ["GOAL"]}, "GOAL")],
)
def test_an_unknown_type_is_a_422_naming_it(server: str, options: dict, named: str) -> None:
    r = httpx.post(f"{server}/extract", json={"text": "Рост доходов", **options}, timeout=60)
    assert r.status_code == 422 and named in r.json()["detail"]
    query = "&".join(f"{k}={v}" for k, vs in options.items() for v in vs)
    upload = httpx.post(f"{server}/extract/brat?{query}", files={"file": ("a.txt", "Рост".encode())})
    assert upload.status_code == 422 and named in upload.json()["detail"]


@pytest.mark.parametrize("path", ["/extract", "/extract/batch"])
def test_a_score_bar_of_true_or_false_is_a_422(server: str, path: str) -> None:
    # JSON's false would otherwise pass as the number 0 (found by the schema fuzzer on /extract/batch).
    body = {"text": "Рост доходов"} if path == "/extract" else {"texts": ["Рост доходов"]}
    r = httpx.post(f"{server}{path}", json={**body, "min_entity_score": False}, timeout=60)
    assert r.status_code == 422 and "not true or false" in r.json()["detail"]
    zero = httpx.post(f"{server}{path}", json={**body, "min_relation_score": 0}, timeout=60)
    assert zero.status_code == 200


def test_brat_answers_carry_scores_as_annotator_notes_on_request(server: str, texts: list[str]) -> None:
    body = extract(server, texts[0])
    plain = httpx.post(f"{server}/extract?format=brat", json={"text": texts[0]}, timeout=120).text
    assert "AnnotatorNotes" not in plain
    noted = httpx.post(f"{server}/extract?format=brat&scores=true", json={"text": texts[0]}, timeout=120)
    doc = parse_ann(noted.text, texts[0])  # brat's reader takes the notes
    assert [e.id for e in doc.entities] == [e["id"] for e in body["entities"]]
    notes = {line.split("\t")[1].split()[1]: line.split("\t")[2] for line in doc.other_lines}
    scored = body["entities"] + body["relations"]
    assert notes == {x["id"]: f"score={x['score']:.4f}" for x in scored}


def test_a_batch_answers_as_the_same_texts_sent_one_by_one(server: str, texts: list[str]) -> None:
    options = {"min_entity_score": 0.3}
    r = httpx.post(f"{server}/extract/batch", json={"texts": texts, **options}, timeout=300)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        alone = extract(server, text, **options)
        assert annotations(result) == annotations(alone) and same_scores(result, alone)
    assert any(result["relations"] for result in results)


def test_an_item_that_cannot_be_processed_gets_its_own_error(server: str, texts: list[str]) -> None:
    r = httpx.post(f"{server}/extract/batch", json={"texts": [texts[0], None, 7, texts[1]]}, timeout=300)
    assert r.status_code == 200, r.text
    first, none, number, last = r.json()["results"]
    assert annotations(first) == annotations(extract(server, texts[0]))
    assert annotations(last) == annotations(extract(server, texts[1]))
    assert none["error"] == number["error"] == "InputError"
    assert "texts[1]" in none["detail"] and "texts[2]" in number["detail"]


def test_a_model_failure_in_a_batch_lands_in_the_slots_that_fail_alone(server: str, texts: list[str]) -> None:
    # The fault fails every inference of this request: the shared pass, then each text alone.
    r = httpx.post(
        f"{server}/extract/batch",
        json={"texts": texts[:2]},
        headers={"X-Renersans-Fault": "error"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["error"] for x in results] == ["InferenceError", "InferenceError"]
    assert all(x["error_id"] for x in results)


def test_a_batch_past_its_limits_is_refused_whole(server: str) -> None:
    r = httpx.post(f"{server}/extract/batch", json={"texts": ["а"] * 65}, timeout=60)
    assert r.status_code == 413 and "RENERSANS_MAX_BATCH_TEXTS" in r.json()["detail"]
