"""Tag schemes: word-level BIO for entities, and per marked entity a word-level relation tag sequence.

Entities live on words: an entity is the word range `[first, last]` of one sentence. Relations are tagged
from the marked entity's point of view: every word of a partner entity gets `TYPE:2` when the partner is
Arg2 (the marked entity is Arg1) or `TYPE:1` when the partner is Arg1; all other words get `0`.
Each relation is written into both of its arguments' copies, so a model sees it from either side, and the
decoder merges the copies back into one set of directed relations.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

ENTITY_TYPES = ("MET", "ECO", "BIN", "CMP", "QUA", "ACT", "INST", "SOC")
RELATION_TYPES = ("NNG", "NNT", "NPS", "PNG", "PNT", "PPS", "FNG", "FNT", "FPS", "GOL", "TSK")
OUTSIDE = "O"
NO_RELATION = "0"
BIO_LABELS = (OUTSIDE, *(f"{p}-{t}" for t in ENTITY_TYPES for p in "BI"))
RELATION_LABELS = (NO_RELATION, *(f"{t}:{arg}" for t in RELATION_TYPES for arg in (1, 2)))


@dataclass(frozen=True)
class WordSpan:
    """An entity on words: type and the inclusive word indices `first..last` within one sentence."""

    type: str
    first: int
    last: int
    # The model's confidence (`span_score`), where a model found it; not part of the span's identity.
    score: float | None = field(default=None, compare=False)
    # The copy gate's probability that the span takes part in a relation (`relation_gate`), where the
    # entity model has a gate head; its relation copy is skipped below the decoding's `copy_gate`.
    relates: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WordRelation:
    """A directed relation between two word spans of one sentence (indices into the sentence's spans)."""

    type: str
    arg1: int
    arg2: int
    # The probability of the decision that made it, where a model made it; not part of its identity.
    score: float | None = field(default=None, compare=False)


def align(words: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The word range whose first word starts at `start` and last word ends at `end`, or None."""
    starts = [a for a, _ in words]
    i = bisect.bisect_left(starts, start)
    if i == len(words) or words[i][0] != start:
        return None
    j = bisect.bisect_left(starts, end) - 1
    if j < i or words[j][1] != end:
        return None
    return i, j


def encode_bio(n_words: int, spans: Sequence[WordSpan]) -> tuple[list[str], list[int]]:
    """BIO tags for `n_words` words. Returns the tags and the indices of the spans that could not be tagged
    because they overlap an earlier one (BIO cannot nest); the caller reports those as lost."""
    tags = [OUTSIDE] * n_words
    lost = []
    for idx in sorted(range(len(spans)), key=lambda k: (spans[k].first, -spans[k].last)):
        s = spans[idx]
        if any(t != OUTSIDE for t in tags[s.first : s.last + 1]):
            lost.append(idx)
            continue
        tags[s.first] = f"B-{s.type}"
        for k in range(s.first + 1, s.last + 1):
            tags[k] = f"I-{s.type}"
    return tags, lost


def decode_bio(tags: Sequence[str]) -> list[WordSpan]:
    """Entity spans from BIO tags.

    Ill-formed sequences follow one rule: an `I-X` that does not continue an entity of type X (after `O`,
    at the start, or after another type) opens a new entity of type X, as if it were `B-X`. Predictions
    are never dropped for being ill-formed.
    """
    spans: list[WordSpan] = []
    current: WordSpan | None = None
    for k, tag in enumerate(tags):
        prefix, _, etype = tag.partition("-")
        if prefix == "I" and current is not None and current.type == etype and current.last == k - 1:
            current = WordSpan(etype, current.first, k)
            spans[-1] = current
        elif prefix in ("B", "I"):
            current = WordSpan(etype, k, k)
            spans.append(current)
        else:
            current = None
    return spans


def span_score(span: WordSpan, probs: np.ndarray, labels: Sequence[str]) -> float:
    """An entity's score: the mean probability, over its words, of the tags that make it (`B-TYPE` on its
    first word, `I-TYPE` on the others), from per-word label probabilities `probs` [words, labels]. Defined
    for any span, also one that decoding stretched (`attach_negations`) or that was given."""
    index = {t: j for j, t in enumerate(labels)}
    inside = index[f"I-{span.type}"]
    picks = [index[f"B-{span.type}"], *([inside] * (span.last - span.first))]
    return float(np.mean(probs[np.arange(span.first, span.last + 1), picks]))


def relation_gate(span: WordSpan, logits: np.ndarray, types: Sequence[str]) -> float:
    """The probability that `span` takes part in a relation, from the gate head's per-word logits [words,
    types]: a linear model of the span's mean hidden state with one weight vector per entity type, so the
    mean of its words' logits for the span's type is the span's logit."""
    z = float(np.mean(logits[span.first : span.last + 1, types.index(span.type)]))
    return 1 / (1 + math.exp(-z)) if z > -700 else 0.0


# Particles the annotators put inside the entity they qualify: the guidelines' own example is
# "BIN не увеличивается BIN" (markup_instruction.pdf), and of the 132 training documents' entities none is
# "не" alone while 241 begin with it.
NEGATIONS = frozenset({"не"})


def attach_negations(spans: Sequence[WordSpan], words: Sequence[str]) -> list[WordSpan]:
    """Entities that are a bare negation particle, joined to the word after it: merged with the entity that
    word begins (keeping the particle's type), or stretched over it when that word is in no entity. Spans
    come sorted and disjoint, as `decode_bio` gives them, and leave so."""
    out: list[WordSpan] = []
    i = 0
    while i < len(spans):
        span = spans[i]
        after = span.last + 1
        following = spans[i + 1] if i + 1 < len(spans) else None
        bare = span.first == span.last and words[span.first].lower() in NEGATIONS
        if bare and after < len(words) and words[after][:1].isalnum():
            if following is not None and following.first == after:
                out.append(WordSpan(span.type, span.first, following.last))
                i += 2
                continue
            out.append(WordSpan(span.type, span.first, after))
        else:
            out.append(span)
        i += 1
    return out


@dataclass(frozen=True)
class Transitions:
    """A CRF's learned transition scores over the BIO labels, added to the Viterbi path's score: `start[j]`
    for a sentence's first label, `pair[i][j]` for label j right after label i, `end[i]` for its last.
    What BIO forbids (`I-X` after anything but `B-X`, `I-X`) stays forbidden whatever the score."""

    start: tuple[float, ...]
    pair: tuple[tuple[float, ...], ...]
    end: tuple[float, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence], size: int) -> Transitions:
        """From `{"start": [..], "pair": [[..], ..], "end": [..]}`; ValueError unless every part fits
        `size` labels."""
        try:
            out = cls(
                tuple(map(float, data["start"])),
                tuple(tuple(map(float, row)) for row in data["pair"]),
                tuple(map(float, data["end"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"transitions need numeric start, pair and end ({e})") from None
        rows = {len(out.start), len(out.end), len(out.pair), *(len(r) for r in out.pair)}
        if rows != {size}:
            raise ValueError(f"transitions must score {size} labels: start, end [{size}], pair [{size}²]")
        return out

    def as_json(self) -> dict[str, list]:
        return {"start": list(self.start), "pair": [list(r) for r in self.pair], "end": list(self.end)}


def viterbi_bio(
    logprobs: np.ndarray, labels: Sequence[str], transitions: Transitions | None = None
) -> list[str]:
    """The most probable well-formed BIO sequence for per-word label log-probabilities [words, labels]:
    `I-X` only right after `B-X` or `I-X`. Unlike argmax, a word whose best label would break an entity
    takes the best label that keeps the sequence well formed, judged over the whole sentence. With a CRF's
    `transitions`, their scores join the path's (a per-word shift of the scores, such as log-softmax's,
    changes no path: raw logits and log-probabilities decode alike)."""
    n, size = logprobs.shape
    if n == 0:
        return []
    inside, penalty = _bio_transitions(tuple(labels))
    score = np.where(inside, -np.inf, logprobs[0])
    end = 0.0
    if transitions is not None:
        start, pair, end = _arrays(transitions)
        penalty = penalty + pair
        score = score + start
    back = np.zeros((n, size), dtype=np.int64)
    for k in range(1, n):
        total = score[:, None] + penalty
        back[k] = total.argmax(0)
        score = total.max(0) + logprobs[k]
    score = score + end
    path = [int(score.argmax())]
    for k in range(n - 1, 0, -1):
        path.append(int(back[k, path[-1]]))
    return [labels[j] for j in reversed(path)]


def bio_allowed(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """What BIO allows: [i, j] where label j may follow label i (`I-X` only after `B-X` or `I-X`), and [j]
    where label j may begin a sentence (not an `I-` tag)."""
    allowed = np.ones((len(labels), len(labels)), dtype=bool)
    for j, lab in enumerate(labels):
        if lab.startswith("I-"):
            allowed[:, j] = [prev in (f"B-{lab[2:]}", lab) for prev in labels]
    return allowed, np.array([not lab.startswith("I-") for lab in labels])


@functools.lru_cache(maxsize=8)
def _arrays(transitions: Transitions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Once per model, not per sentence: the scores are tuples so that Transitions stays frozen and hashable.
    return tuple(np.asarray(x) for x in (transitions.start, transitions.pair, transitions.end))


@functools.cache
def _bio_transitions(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Which labels are `I-` tags, and a transition penalty: 0 where label j may follow label i, -inf
    where it may not."""
    allowed, first = bio_allowed(labels)
    return ~first, np.where(allowed, 0.0, -np.inf)


def encode_relations(
    n_words: int, spans: Sequence[WordSpan], relations: Sequence[WordRelation]
) -> tuple[list[list[str]], list[WordRelation]]:
    """One relation tag sequence per span (the copy where that span is marked).

    A relation is written into both of its arguments' copies. A pair of entities can hold one tag per copy,
    so a second relation between the same pair goes into Arg2's copy alone and the first keeps Arg1's; a
    third cannot be held and is returned as lost. Exact duplicates are one relation.
    """
    copies = [[NO_RELATION] * n_words for _ in spans]
    by_pair: dict[frozenset[int], list[WordRelation]] = {}
    for rel in dict.fromkeys(relations):
        by_pair.setdefault(frozenset((rel.arg1, rel.arg2)), []).append(rel)

    def put(marked: int, partner: int, tag: str) -> None:
        target = spans[partner]
        for k in range(target.first, target.last + 1):
            copies[marked][k] = tag

    lost = []
    for rels in by_pair.values():
        first, *rest = rels
        if rest:
            second, *lost_here = rest
            put(first.arg1, first.arg2, f"{first.type}:2")
            put(second.arg2, second.arg1, f"{second.type}:1")
            lost.extend(lost_here)
        else:
            put(first.arg1, first.arg2, f"{first.type}:2")
            put(first.arg2, first.arg1, f"{first.type}:1")
    return copies, lost


def decode_relations(
    marked: int, tags: Sequence[str], spans: Sequence[WordSpan], confidence: Sequence[float] | None = None
) -> list[WordRelation]:
    """Relations read from one marked copy: each other span's relation is the tag on its first word. With
    `confidence` (the probability of each word's tag), a relation's score is its tag's probability."""
    found = []
    for idx, span in enumerate(spans):
        if idx == marked:
            continue
        rtype, _, arg = tags[span.first].partition(":")
        if rtype == NO_RELATION or arg not in ("1", "2"):
            continue
        score = None if confidence is None else float(confidence[span.first])
        if arg == "2":
            found.append(WordRelation(rtype, marked, idx, score))
        else:
            found.append(WordRelation(rtype, idx, marked, score))
    return found


def merge_relations(found: Sequence[WordRelation]) -> list[WordRelation]:
    """One set of relations from all copies, in order of discovery.

    The same relation read from both arguments' copies is kept once. A pair found with one type in both
    directions is also one relation (the shared task scores argument pairs in either order), the first
    reading winning; different types between the same pair are all kept.
    """
    seen = set()
    merged = []
    for rel in found:
        key = (rel.type, frozenset((rel.arg1, rel.arg2)))
        if key not in seen:
            seen.add(key)
            merged.append(rel)
    return merged


Signature = tuple[str, str, str]  # (Arg1's entity type, relation type, Arg2's entity type)


def pair_relations(
    readings: Mapping[tuple[int, int], np.ndarray],
    labels: Sequence[str],
    none_weight: float = 1.0,
    types: Sequence[str] = (),
    signatures: frozenset[Signature] = frozenset(),
) -> list[WordRelation]:
    """One decision per pair of spans from the relation-label probabilities read in both of its copies.

    `readings[(marked, partner)]` is the probability vector over `labels` that `marked`'s copy gives the
    partner span. The two copies see the pair from opposite sides (`T:2` in one is `T:1` in the other), so
    they are put in one frame and averaged; the pair then takes the best label, 'no relation' included. At
    most one relation per pair: the shared task's data has one such pair in 12,644 relations, while keeping
    every type either copy proposes costs precision. `none_weight` scales the averaged probability of 'no
    relation' before the decision (below 1: more relations, higher recall).

    With `signatures` (and `types`, the entity type of each span), a pair can only take a relation whose
    signature is in the set, read with the pair's direction: `T:2` makes the lower span Arg1.
    """
    flip = np.array([labels.index(_flipped(lab)) for lab in labels])
    pairs: dict[tuple[int, int], list[np.ndarray]] = {}
    for (marked, partner), probs in readings.items():
        lo, hi = min(marked, partner), max(marked, partner)
        pairs.setdefault((lo, hi), []).append(probs if marked == lo else probs[flip])
    weights = np.array([none_weight if lab == "0" else 1.0 for lab in labels])
    names = tuple(labels)
    found = []
    for (lo, hi), frames in sorted(pairs.items()):
        scores = np.mean(frames, axis=0) * weights
        if signatures:
            scores = np.where(_signature_mask(names, types[lo], types[hi], signatures), scores, -1.0)
        best = int(scores.argmax())
        rtype, _, arg = labels[best].partition(":")
        # The score is the averaged probability of the label taken, before `none_weight` tipped the choice.
        score = float(np.mean(frames, axis=0)[best])
        if arg == "2":
            found.append(WordRelation(rtype, lo, hi, score))
        elif arg == "1":
            found.append(WordRelation(rtype, hi, lo, score))
    return found


@functools.cache
def _signature_mask(
    labels: tuple[str, ...], lo_type: str, hi_type: str, signatures: frozenset[Signature]
) -> np.ndarray:
    """Which labels a pair (lower span of `lo_type`, higher of `hi_type`) may take: 'no relation' always."""
    allowed = []
    for lab in labels:
        rtype, _, arg = lab.partition(":")
        signature = (lo_type, rtype, hi_type) if arg == "2" else (hi_type, rtype, lo_type)
        allowed.append(arg not in ("1", "2") or signature in signatures)
    return np.array(allowed)


def _flipped(label: str) -> str:
    rtype, _, arg = label.partition(":")
    return {"1": f"{rtype}:2", "2": f"{rtype}:1"}.get(arg, label)
