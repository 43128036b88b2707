from __future__ import annotations

from app.metric import Counts, evaluate, exact_counts, ner_counts, relation_counts
from app.text.brat import Document, Entity, Relation


def spans_of(text: str, marked: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    out = []
    for etype, phrase in marked:
        start = text.index(phrase)
        out.append((etype, start, start + len(phrase)))
    return out


def test_organisers_worked_example() -> None:
    # The example at the end of the organisers' evaluate_ners.py: TP = 1, FP = 3, FN = 3.
    text = (
        "Создание новых рабочих мест необходимо производить релугярно в рамках программы поддержки населения."
    )
    gold = spans_of(
        text,
        [
            ("BIN", "Создание"),
            ("ECO", "новых рабочих мест"),
            ("BIN", "производить релугярно"),
            ("ACT", "программы поддержки населения"),
        ],
    )
    pred = spans_of(
        text,
        [
            ("BIN", "Создание"),
            ("ECO", "рабочих мест"),
            ("BIN", "производить"),
            ("ACT", "поддержки населения"),
        ],
    )
    assert ner_counts(gold, pred) == Counts(1, 3, 3)


def test_sweep_quirk_is_reproduced() -> None:
    # A prediction starting before an overlapping gold entity: the organisers count a false positive and
    # skip the gold entity, which is then counted neither way; set matching counts it as missed.
    gold = [("MET", 5, 8)]
    pred = [("MET", 0, 10)]
    assert ner_counts(gold, pred) == Counts(0, 2, 0)
    assert exact_counts(gold, pred) == Counts(0, 1, 1)


def test_type_matters_for_entities() -> None:
    assert ner_counts([("MET", 0, 4)], [("ECO", 0, 4)]) == Counts(0, 1, 1)


def test_relations_match_in_either_order_and_need_the_type() -> None:
    a, b, c = ("CMP", 0, 4), ("MET", 5, 12), ("ECO", 13, 20)
    gold = [("NPS", a, b), ("TSK", b, c)]
    assert relation_counts(gold, [("NPS", b, a), ("GOL", b, c)]) == Counts(1, 1, 1)
    assert relation_counts(gold, []) == Counts(0, 0, 2)
    # An argument whose span matches but whose type does not is not the same argument.
    assert relation_counts(gold, [("NPS", ("ACT", 0, 4), b)]) == Counts(0, 1, 2)


def test_missing_prediction_file_counts_as_missed() -> None:
    text = "рост доходов"
    ents = [Entity("T1", "CMP", 0, 4, "рост"), Entity("T2", "MET", 5, 12, "доходов")]
    gold = [Document("a", text, ents, [Relation("R1", "NPS", "T2", "T1")])]
    ner = evaluate(gold, {}, "ner")
    assert (ner.micro, ner.missing_predictions) == (Counts(0, 0, 2), ["a"])
    re = evaluate(gold, {"a": Document("a", text, ents, [Relation("R1", "NPS", "T1", "T2")])}, "re")
    assert re.micro == Counts(1, 0, 0) and re.micro.f1 == 1.0
    assert re.per_type == {"NPS": Counts(1, 0, 0)}
