from __future__ import annotations

import numpy as np
import pytest

from app.decoding import Decoding
from app.pipeline import calibrated, span_prob
from app.text.tags import (
    BIO_LABELS,
    RELATION_LABELS,
    WordRelation,
    WordSpan,
    align,
    attach_negations,
    decode_bio,
    decode_relations,
    encode_bio,
    encode_relations,
    merge_relations,
    pair_relations,
    span_score,
    viterbi_bio,
)


def test_label_sets() -> None:
    assert len(BIO_LABELS) == 17 and BIO_LABELS[0] == "O"
    assert len(RELATION_LABELS) == 23 and RELATION_LABELS[0] == "0"


BIO = [
    ([], []),
    ([WordSpan("CMP", 0, 0)], ["B-CMP", "O", "O"]),
    ([WordSpan("MET", 0, 2)], ["B-MET", "I-MET", "I-MET"]),
    ([WordSpan("CMP", 0, 0), WordSpan("MET", 1, 2)], ["B-CMP", "B-MET", "I-MET"]),
    ([WordSpan("ECO", 0, 0), WordSpan("ECO", 1, 1)], ["B-ECO", "B-ECO", "O"]),
    ([WordSpan("SOC", 2, 2)], ["O", "O", "B-SOC"]),
]


@pytest.mark.parametrize(("spans", "tags"), BIO)
def test_bio_round_trip(spans: list[WordSpan], tags: list[str]) -> None:
    n = len(tags) or 3
    encoded, lost = encode_bio(n, spans)
    assert lost == []
    assert encoded == (tags or ["O"] * 3)
    assert decode_bio(encoded) == spans


ILL_FORMED = [
    (["I-MET", "I-MET"], [WordSpan("MET", 0, 1)]),
    (["O", "I-MET", "O"], [WordSpan("MET", 1, 1)]),
    (["B-CMP", "I-MET"], [WordSpan("CMP", 0, 0), WordSpan("MET", 1, 1)]),
    (["B-MET", "O", "I-MET"], [WordSpan("MET", 0, 0), WordSpan("MET", 2, 2)]),
]


@pytest.mark.parametrize(("tags", "spans"), ILL_FORMED)
def test_ill_formed_bio_opens_a_new_entity(tags: list[str], spans: list[WordSpan]) -> None:
    assert decode_bio(tags) == spans


def test_overlapping_spans_are_reported_not_tagged() -> None:
    tags, lost = encode_bio(4, [WordSpan("MET", 0, 3), WordSpan("ECO", 1, 2)])
    assert tags == ["B-MET", "I-MET", "I-MET", "I-MET"]
    assert lost == [1]


def test_align() -> None:
    words = [(0, 4), (5, 12), (12, 13), (14, 20)]
    assert align(words, 5, 13) == (1, 2)
    assert align(words, 0, 20) == (0, 3)
    assert align(words, 6, 12) is None
    assert align(words, 5, 11) is None


def test_relations_from_both_sides() -> None:
    spans = [WordSpan("CMP", 0, 0), WordSpan("MET", 1, 2), WordSpan("ECO", 3, 3)]
    rels = [WordRelation("NPS", 1, 0), WordRelation("TSK", 0, 2)]
    copies, lost = encode_relations(4, spans, rels)
    assert lost == []
    assert copies[0] == ["0", "NPS:1", "NPS:1", "TSK:2"]
    assert copies[1] == ["NPS:2", "0", "0", "0"]
    assert copies[2] == ["TSK:1", "0", "0", "0"]
    found = [r for k, tags in enumerate(copies) for r in decode_relations(k, tags, spans)]
    assert sorted(merge_relations(found), key=str) == sorted(rels, key=str)


def test_two_types_on_one_pair_use_both_copies_a_third_is_lost() -> None:
    spans = [WordSpan("CMP", 0, 0), WordSpan("MET", 1, 1)]
    rels = [WordRelation("NPS", 0, 1), WordRelation("GOL", 0, 1), WordRelation("TSK", 1, 0)]
    copies, lost = encode_relations(2, spans, rels)
    assert lost == [WordRelation("TSK", 1, 0)]
    found = [r for k, tags in enumerate(copies) for r in decode_relations(k, tags, spans)]
    assert set(merge_relations(found)) == {WordRelation("NPS", 0, 1), WordRelation("GOL", 0, 1)}


def test_merge_keeps_one_reading_of_a_pair_per_type() -> None:
    found = [WordRelation("NPS", 0, 1), WordRelation("NPS", 1, 0), WordRelation("GOL", 1, 0)]
    assert merge_relations(found) == [WordRelation("NPS", 0, 1), WordRelation("GOL", 1, 0)]


def _logprobs(rows: list[dict[str, float]], labels: tuple[str, ...]) -> np.ndarray:
    """Per-word log-probabilities with the given labels' probabilities and the rest spread evenly."""
    out = np.empty((len(rows), len(labels)))
    for k, row in enumerate(rows):
        rest = (1 - sum(row.values())) / (len(labels) - len(row))
        out[k] = np.log([row.get(lab, rest) for lab in labels])
    return out


def test_viterbi_repairs_an_entity_argmax_would_break() -> None:
    # Per word, argmax reads O I-MET I-MET: an ill-formed start. The best well-formed sequence opens the
    # entity on the second word, which was nearly as likely to be B-MET.
    scores = _logprobs([{"O": 0.9}, {"I-MET": 0.5, "B-MET": 0.45}, {"I-MET": 0.9}], BIO_LABELS)
    assert [BIO_LABELS[i] for i in scores.argmax(1)] == ["O", "I-MET", "I-MET"]
    assert viterbi_bio(scores, BIO_LABELS) == ["O", "B-MET", "I-MET"]


def test_viterbi_never_continues_another_type() -> None:
    scores = _logprobs([{"B-ECO": 0.9}, {"I-MET": 0.6, "I-ECO": 0.3}], BIO_LABELS)
    tags = viterbi_bio(scores, BIO_LABELS)
    assert tags[0] == "B-ECO" and tags[1] != "I-MET"
    assert viterbi_bio(np.zeros((0, len(BIO_LABELS))), BIO_LABELS) == []


def test_pair_decision_averages_both_copies_in_one_frame() -> None:
    labels = RELATION_LABELS
    # Span 0's copy reads span 1 as GOL Arg2 (0 -> 1); span 1's copy sees the same relation from the other
    # side (GOL:1, its partner is Arg1) less surely, and mostly no relation.
    one = _logprobs([{"GOL:2": 0.6, "0": 0.2}], labels)[0]
    other = _logprobs([{"0": 0.55, "GOL:1": 0.4}], labels)[0]
    assert pair_relations({(0, 1): np.exp(one), (1, 0): np.exp(other)}, labels) == [WordRelation("GOL", 0, 1)]
    # Two types proposed by the two copies: one decision for the pair.
    tsk = _logprobs([{"TSK:1": 0.5, "0": 0.1}], labels)[0]
    found = pair_relations({(0, 1): np.exp(one), (1, 0): np.exp(tsk)}, labels)
    assert found == [WordRelation("GOL", 0, 1)]
    # Mostly no relation on both sides: nothing.
    none = _logprobs([{"0": 0.9}], labels)[0]
    assert pair_relations({(0, 1): np.exp(none), (1, 0): np.exp(none)}, labels) == []
    # A partner only one copy could see is decided from that copy.
    assert pair_relations({(1, 0): np.exp(tsk)}, labels) == [WordRelation("TSK", 0, 1)]


def test_none_weight_trades_no_relation_for_the_best_type() -> None:
    labels = RELATION_LABELS
    # 'No relation' at 0.5 against GOL at 0.4 in both copies: kept out at weight 1, in below 0.8.
    one = np.exp(_logprobs([{"0": 0.5, "GOL:2": 0.4}], labels)[0])
    other = np.exp(_logprobs([{"0": 0.5, "GOL:1": 0.4}], labels)[0])
    readings = {(0, 1): one, (1, 0): other}
    assert pair_relations(readings, labels) == []
    assert pair_relations(readings, labels, none_weight=0.85) == []
    assert pair_relations(readings, labels, none_weight=0.7) == [WordRelation("GOL", 0, 1)]


def test_signatures_keep_a_pair_to_relations_its_types_can_hold() -> None:
    labels = RELATION_LABELS
    # Copy 0 reads GOL with span 0 as Arg1 (0.5), then TSK the other way round (0.3).
    one = np.exp(_logprobs([{"GOL:2": 0.5, "TSK:1": 0.3, "0": 0.1}], labels)[0])
    readings = {(0, 1): one}
    types = ["BIN", "ECO"]
    assert pair_relations(readings, labels, types=types) == [WordRelation("GOL", 0, 1)]
    both = frozenset({("BIN", "GOL", "ECO"), ("ECO", "TSK", "BIN")})
    assert pair_relations(readings, labels, types=types, signatures=both) == [WordRelation("GOL", 0, 1)]
    # GOL from BIN to ECO unseen: the best allowed reading, in its own direction.
    tsk_only = frozenset({("ECO", "TSK", "BIN")})
    assert pair_relations(readings, labels, types=types, signatures=tsk_only) == [WordRelation("TSK", 1, 0)]
    # The direction counts: GOL from ECO to BIN does not allow GOL from BIN to ECO.
    reversed_gol = frozenset({("ECO", "GOL", "BIN")})
    assert pair_relations(readings, labels, types=types, signatures=reversed_gol) == []


def test_span_probability_is_the_mean_of_its_tags() -> None:
    labels = ("O", "B-ACT", "I-ACT")
    tags = ["O", "B-ACT", "I-ACT"]
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.4, 0.5]])
    assert span_prob(WordSpan("ACT", 1, 2), tags, probs, labels) == pytest.approx(0.6)
    assert span_prob(WordSpan("ACT", 1, 1), tags, probs, labels) == pytest.approx(0.7)


def test_an_entity_scores_the_tags_that_make_it_whatever_was_decoded() -> None:
    labels = ("O", "B-ACT", "I-ACT")
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.4, 0.5]])
    # As span_prob where decoding gave B-ACT I-ACT.
    assert span_score(WordSpan("ACT", 1, 2), probs, labels) == pytest.approx(0.6)
    # A span stretched over a word tagged O scores that word's I-ACT: 0.05, so a lower score.
    assert span_score(WordSpan("ACT", 0, 1), probs, labels) == pytest.approx((0.05 + 0.1) / 2)
    # The score is not part of a span's identity: gold spans equal scored predictions.
    assert WordSpan("ACT", 1, 2, score=0.6) == WordSpan("ACT", 1, 2)


def test_a_pair_decision_scores_the_averaged_probability_of_its_label() -> None:
    labels = RELATION_LABELS
    one = np.exp(_logprobs([{"0": 0.5, "GOL:2": 0.4}], labels)[0])
    other = np.exp(_logprobs([{"0": 0.5, "GOL:1": 0.3}], labels)[0])
    [found] = pair_relations({(0, 1): one, (1, 0): other}, labels, none_weight=0.6)
    # none_weight tipped the choice; the score is still GOL's own averaged probability, not reweighted.
    assert found == WordRelation("GOL", 0, 1) and found.score == pytest.approx(0.35, abs=1e-6)


NEGATION = [
    # "не" tagged alone, the next word its own entity: one entity, the particle's type.
    ([WordSpan("BIN", 0, 0), WordSpan("CMP", 1, 2)], ["не", "снижается", "объем"], [WordSpan("BIN", 0, 2)]),
    # The next word in no entity: stretched over it; a later entity untouched.
    (
        [WordSpan("QUA", 1, 1), WordSpan("ECO", 3, 3)],
        ["Проект", "Не", "реализован", "в", "бюджете"],
        [WordSpan("QUA", 1, 2), WordSpan("ECO", 3, 3)],
    ),
    # Nothing to join: punctuation or the end of the sentence after it; "не" inside a longer entity.
    ([WordSpan("BIN", 0, 0)], ["не", ","], [WordSpan("BIN", 0, 0)]),
    ([WordSpan("BIN", 1, 1)], ["и", "не"], [WordSpan("BIN", 1, 1)]),
    ([WordSpan("BIN", 0, 1)], ["не", "увеличивается"], [WordSpan("BIN", 0, 1)]),
    # Another one-word entity is left alone.
    (
        [WordSpan("BIN", 0, 0), WordSpan("ECO", 1, 1)],
        ["рост", "доходов"],
        [WordSpan("BIN", 0, 0), WordSpan("ECO", 1, 1)],
    ),
]


@pytest.mark.parametrize(("spans", "words", "joined"), NEGATION)
def test_a_bare_negation_joins_the_word_after_it(
    spans: list[WordSpan], words: list[str], joined: list[WordSpan]
) -> None:
    assert attach_negations(spans, words) == joined


def test_a_score_map_keeps_the_order_of_scores_and_no_decision() -> None:
    scores = [0.01, 0.2, 0.5, 0.7, 0.99]
    assert [calibrated(p, 1.0, 0.0) for p in scores] == scores and calibrated(None, 2.0, 1.0) is None
    mapped = [calibrated(p, 1.04, -0.55) for p in scores]
    assert mapped == sorted(mapped) and all(0 < m < p for m, p in zip(mapped, scores, strict=True))
    # Score maps are not decisions: the dev figures measured without one hold with it.
    decoding = Decoding(entity_score_temperature=1.04, entity_score_shift=-0.55)
    assert decoding.decisions() == Decoding().decisions() and decoding != Decoding()
