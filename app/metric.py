"""The RuREBus shared task's metric: micro-F1 over documents, per-type figures beside it.

NER follows the organisers' `evaluate_ners.py` (dialogue-evaluation/RuREBus, eval_scripts, commit 0adcc03):
entities `(type, start, end)` of each document sorted by start, then one sweep over gold and predicted lists.
That sweep has a quirk we keep so our numbers are the task's numbers: when a predicted entity starts before
an overlapping gold one, it counts a false positive but advances past the *gold* entity, which is then
counted neither way. `exact` beside each figure is plain set matching, to show where the two differ.

Relations follow what the organisers' `evaluate_rels.py` means to compute (its code compares the gold file
with itself): a predicted relation is correct when a gold relation of the same type has the same two
argument spans `(type, start, end)` in either order; a document with no predicted relations counts all its
gold as missed; a gold document without a predicted file counts as one with no predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.text.brat import Document

Span = tuple[str, int, int]


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def ner_counts(gold: Sequence[Span], pred: Sequence[Span]) -> Counts:
    """The organisers' sweep over one document's entities (see the module docstring for its quirk)."""
    true = sorted(gold, key=lambda x: x[1])
    found = sorted(pred, key=lambda x: x[1])
    tp = fp = fn = 0
    i = j = 0
    while i != len(true) and j != len(found):
        t, p = true[i], found[j]
        if t == p:
            tp, i, j = tp + 1, i + 1, j + 1
        elif t[1] >= p[2]:
            fp, j = fp + 1, j + 1
        elif t[2] <= p[1] or t[1] < p[1]:
            fn, i = fn + 1, i + 1
        elif t[1] > p[1]:
            fp, i = fp + 1, i + 1  # sic: the organisers advance the gold list here
        else:
            fp, fn, i, j = fp + 1, fn + 1, i + 1, j + 1
    return Counts(tp, fp + len(found) - j, fn + len(true) - i)


def exact_counts(gold: Iterable[Span], pred: Iterable[Span]) -> Counts:
    """Plain set matching of exact spans (or of relation keys)."""
    g, p = set(gold), set(pred)
    return Counts(len(g & p), len(p - g), len(g - p))


RelationKey = tuple[str, Span, Span]


def relation_keys(doc: Document) -> list[RelationKey]:
    by_id = doc.entity_by_id()
    return [(r.type, by_id[r.arg1].span, by_id[r.arg2].span) for r in doc.relations]


def relation_counts(gold: Sequence[RelationKey], pred: Sequence[RelationKey]) -> Counts:
    """Relations match on type and both argument spans, in either order (one document)."""
    if not pred:
        return Counts(fn=len(gold))

    def unordered(keys: Iterable[RelationKey]) -> set[tuple[str, frozenset[Span]]]:
        return {(t, frozenset((a, b))) for t, a, b in keys}

    gold_set, pred_set = unordered(gold), unordered(pred)
    tp = sum(1 for t, a, b in gold if (t, frozenset((a, b))) in pred_set)
    fp = sum(1 for t, a, b in pred if (t, frozenset((a, b))) not in gold_set)
    return Counts(tp, fp, len(gold) - tp)


@dataclass
class Report:
    task: str
    documents: int
    micro: Counts = field(default_factory=Counts)
    exact: Counts = field(default_factory=Counts)
    per_type: dict[str, Counts] = field(default_factory=dict)
    missing_predictions: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A markdown table: micro first, then each type."""
        rows = [
            f"| {self.task} | P | R | F1 | TP | FP | FN |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        named = [("micro (official)", self.micro), ("micro (exact match)", self.exact)]
        for name, c in [*named, *sorted(self.per_type.items())]:
            rows.append(
                f"| {name} | {c.precision:.4f} | {c.recall:.4f} | {c.f1:.4f} | {c.tp} | {c.fp} | {c.fn} |"
            )
        return "\n".join(rows)

    def as_dict(self) -> dict[str, object]:
        def one(c: Counts) -> dict[str, float | int]:
            scores = {"precision": c.precision, "recall": c.recall, "f1": c.f1}
            return {**scores, "tp": c.tp, "fp": c.fp, "fn": c.fn}

        return {
            "task": self.task,
            "documents": self.documents,
            "micro": one(self.micro),
            "exact": one(self.exact),
            "per_type": {k: one(v) for k, v in sorted(self.per_type.items())},
            "missing_predictions": self.missing_predictions,
        }


def evaluate(gold: Sequence[Document], pred: Mapping[str, Document], task: str) -> Report:
    """Score predicted documents (by name) against gold ones; `task` is "ner" or "re"."""
    if task not in ("ner", "re"):
        raise ValueError(f"task must be 'ner' or 're', not {task!r}")
    report = Report(task, len(gold))
    for g in gold:
        p = pred.get(g.name)
        if p is None:
            report.missing_predictions.append(g.name)
            p = Document(g.name, g.text)
        if task == "ner":
            gs, ps = [e.span for e in g.entities], [e.span for e in p.entities]
            report.micro += ner_counts(gs, ps)
            report.exact += exact_counts(gs, ps)
            for t in {s[0] for s in gs} | {s[0] for s in ps}:
                c = ner_counts([s for s in gs if s[0] == t], [s for s in ps if s[0] == t])
                report.per_type[t] = report.per_type.get(t, Counts()) + c
        else:
            gk, pk = relation_keys(g), relation_keys(p)
            c = relation_counts(gk, pk)
            report.micro += c
            report.exact += c
            for t in {k[0] for k in gk} | {k[0] for k in pk}:
                ct = relation_counts([k for k in gk if k[0] == t], [k for k in pk if k[0] == t])
                report.per_type[t] = report.per_type.get(t, Counts()) + ct
    return report
