"""The two-stage pipeline: text -> sentences -> entities -> one marked copy per entity -> relations.

Numpy only. The encoder is a `Runner`: anything that maps a padded batch of piece ids to per-piece logits
for each head. Training evaluates its torch models through this same code, and the service runs its ONNX
sessions through it, so dev figures and served output come from one implementation.
"""

from __future__ import annotations

import bisect
import contextvars
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from app.decoding import Decoding
from app.text.brat import Document, Entity
from app.text.encode import decode_document
from app.text.segment import Sentence, segment
from app.text.subwords import Pieces, WordPieces, context_window, mark, tagging_inputs
from app.text.tags import (
    Signature,
    Transitions,
    WordRelation,
    WordSpan,
    align,
    attach_negations,
    decode_bio,
    decode_relations,
    merge_relations,
    pair_relations,
    relation_gate,
    span_score,
    viterbi_bio,
)

# (ids [batch, pieces], attention mask [batch, pieces]) -> {head name: logits [batch, pieces, labels]}
Runner = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]

# Padded pieces in one encoder run. A run's activations grow with it, and ONNX Runtime's arena keeps the
# largest set that concurrent runs ever needed: on a CPU, 1024 held a served bundle to 447 MB under the soak
# (8192: 567 MB) at the same speed, since a few rows compute as fast per piece as many (BENCHMARKS.md,
# "Memory"). A GPU wants large batches: 8192 there.
CPU_RUN_PIECES = 1024
GPU_RUN_PIECES = 8192


@dataclass(frozen=True)
class TaggerSpec:
    """What the pipeline must know about one model besides its weights."""

    labels: dict[str, tuple[str, ...]]  # head name -> label names, index = class id
    max_pieces: int
    typed_markers: bool = False
    pad_id: int = 1
    transitions: Transitions | None = None  # the entity head's CRF, where it was trained with one
    # Pieces of the document's neighbouring words the entity model reads on either side of each sentence
    # (`tagging_inputs`): what it was trained with, 0 for a sentence alone.
    context: int = 0


@dataclass
class Tagger:
    run: Runner
    pieces: WordPieces
    spec: TaggerSpec
    providers: list[str] = field(default_factory=list)  # where it runs, for reports
    # Its output for a row depends on the other rows of the batch: int8 with dynamic quantization scales
    # activations by the range of the whole batch. The pipeline then batches each sentence's relation copies
    # apart (`run_batched`'s `sentences`), so that a sentence's relations depend on that sentence alone.
    batch_dependent: bool = False


def _batches(
    order: Sequence[int],
    sizes: Sequence[int],
    max_batch: int,
    max_tokens: int,
    max_padding: float = 0.1,
    keys: Sequence[int] | None = None,
) -> list[list[int]]:
    """Consecutive groups of `order` (sorted by length) with at most `max_batch` items, padded size
    (items x longest) at most `max_tokens`, and padding at most `max_padding` of the real pieces: on a CPU
    a batch of 4 rows computes as fast per piece as one of 32, so padding is pure loss (the cap made the
    int8 pipeline 1.23x faster, BENCHMARKS.md). With `keys`, items of different keys never share a group."""
    groups: list[list[int]] = []
    real = 0
    for i in order:
        padded = (len(groups[-1]) + 1) * sizes[i] if groups else 0
        if (
            groups
            and (keys is None or keys[groups[-1][0]] == keys[i])
            and len(groups[-1]) < max_batch
            and padded <= max_tokens
            and padded <= (real + sizes[i]) * (1 + max_padding)
        ):
            groups[-1].append(i)
            real += sizes[i]
        else:
            groups.append([i])
            real = sizes[i]
    return groups


def run_batched(
    tagger: Tagger,
    inputs: Sequence[Pieces],
    head: str,
    batch_size: int = 32,
    max_tokens: int = 8192,
    max_padding: float = 0.1,
    sentences: Sequence[int] | None = None,
    workers: int = 1,
) -> list[np.ndarray]:
    """Logits of `head` at each word's first piece, one array [words, labels] per input, batched by length.
    For a batch-dependent tagger, `sentences` (each input's sentence) keeps each sentence's inputs apart.
    `workers`: batches run at once (see `run_heads`)."""
    return run_heads(tagger, inputs, (head,), batch_size, max_tokens, max_padding, sentences, workers)[head]


def run_heads(
    tagger: Tagger,
    inputs: Sequence[Pieces],
    heads: Sequence[str],
    batch_size: int = 32,
    max_tokens: int = 8192,
    max_padding: float = 0.1,
    sentences: Sequence[int] | None = None,
    workers: int = 1,
) -> dict[str, list[np.ndarray]]:
    """`run_batched` for several heads of one model run: per head, one array [words, labels] per input.

    With `workers` > 1 that many batches run at once, from threads (ONNX Runtime releases the GIL while it
    computes). On a CPU, single-threaded runs side by side use the cores better than one run split across
    them, above all for the small one-sentence batches of an int8 model (BENCHMARKS.md). Each batch's rows
    are the same either way, so are the answers."""
    sizes = [len(p.ids) for p in inputs]
    keys = sentences if tagger.batch_dependent else None
    order = sorted(range(len(inputs)), key=lambda i: (keys[i] if keys else 0, sizes[i]))
    groups = _batches(order, sizes, batch_size, max_tokens, max_padding, keys)

    def run(group: list[int]) -> dict[str, np.ndarray]:
        width = max(sizes[i] for i in group)
        ids = np.full((len(group), width), tagger.spec.pad_id, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for row, i in enumerate(group):
            ids[row, : sizes[i]] = inputs[i].ids
            mask[row, : sizes[i]] = 1
        return tagger.run(ids, mask)

    if workers > 1 and len(groups) > 1:
        # Each batch runs in a copy of the caller's context: what is set for the request (a fault to inject,
        # app/faults.py) reaches its batches and no other request's.
        with ThreadPoolExecutor(min(workers, len(groups))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, run, group) for group in groups]
            results = [f.result() for f in futures]
    else:
        results = [run(group) for group in groups]
    out: dict[str, list[np.ndarray]] = {head: [np.empty(0)] * len(inputs) for head in heads}
    for group, logits in zip(groups, results, strict=True):
        for head in heads:
            for row, i in enumerate(group):
                out[head][i] = logits[head][row, inputs[i].first]
    return out


def span_prob(span: WordSpan, tags: Sequence[str], probs: np.ndarray, labels: Sequence[str]) -> float:
    """The mean probability of the tags that make up `span` (per word, from `probs` [words, labels])."""
    index = {t: j for j, t in enumerate(labels)}
    return float(np.mean([probs[k, index[tags[k]]] for k in range(span.first, span.last + 1)]))


def calibrated(score: float | None, temperature: float, shift: float) -> float | None:
    """`score` with its log-odds divided by `temperature`, then moved by `shift` (1 and 0: as it is)."""
    if score is None or (temperature == 1.0 and shift == 0.0):
        return score
    p = min(max(score, 1e-7), 1 - 1e-7)
    return float(1 / (1 + math.exp(-(math.log(p / (1 - p)) / temperature + shift))))


def joint_score(score: float | None, first: WordSpan, second: WordSpan) -> float:
    """The chance that a relation between `first` and `second` whose decision has `score` is right as
    found: the three scores multiplied (a score missing, as for entities given rather than found, is 1)."""
    joint = 1.0
    for s in (score, first.score, second.score):
        joint *= 1.0 if s is None else s
    return joint


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@dataclass
class Pipeline:
    ner: Tagger | None = None
    re: Tagger | None = None
    batch_size: int = 32
    # Padded pieces in one encoder run (see CPU_RUN_PIECES); a single row longer than it runs alone.
    max_tokens: int = CPU_RUN_PIECES
    # Padding allowed in a batch, as a fraction of its real pieces (see `_batches`).
    max_padding: float = 0.1
    # Pieces of context shared by consecutive windows of a sentence too long for the model.
    overlap: int = 64
    # Encoder batches run at once (`run_heads`); the service sets one per core on a CPU.
    workers: int = 1
    # How logits become entities and relations: a bundle's own (its manifest's), or this version's defaults.
    decoding: Decoding = field(default_factory=Decoding)
    # Relations a pair of entity types may hold, (Arg1 type, relation, Arg2 type); empty allows all. Those
    # seen in the training documents (`app/corpus.py: relation_signatures`) made no difference to dev F1
    # (training/RESULTS.md), so no bundle sets them.
    signatures: frozenset[Signature] = frozenset()

    def entities(self, text: str, sentences: Sequence[Sentence] | None = None) -> list[list[WordSpan]]:
        """Entity spans per sentence of `text` (see `tag_entities`)."""
        if sentences is None:
            sentences = segment(text)
        return self.tag_entities(_words(text, sentences))

    def tag_entities(
        self, sentence_words: Sequence[Sequence[str]], documents: Sequence[int] | None = None
    ) -> list[list[WordSpan]]:
        """Entity spans per sentence, each scored (`span_score`), all sentences in one batched pass: they
        may come from several documents, `documents` giving each sentence's (consecutive sentences of one
        document share a number; None: all one document). A model trained with context reads the
        neighbouring sentences of the same document. Sentences longer than the model are cut into
        overlapping windows; each word takes its label from the window where it has the most context on
        both sides."""
        if self.ner is None:
            raise ValueError("this pipeline has no entity model; use relations_for() with given entities")
        heads = ("entity", "gate") if self.gated else ("entity",)
        per_word = self._per_word(sentence_words, heads, documents)
        labels = self.ner.spec.labels["entity"]
        spans = []
        decoding = self.decoding
        for si, (words, sc) in enumerate(zip(sentence_words, per_word["entity"], strict=True)):
            probs = _softmax(sc)
            logprobs = np.log(probs)
            if decoding.o_bias:
                logprobs[:, labels.index("O")] += decoding.o_bias
            if decoding.bio == "viterbi":
                tags = viterbi_bio(logprobs, labels, self.ner.spec.transitions)
            else:
                tags = [labels[c] for c in logprobs.argmax(-1)]
            found = decode_bio(tags)
            if decoding.min_entity_prob > 0:
                found = [e for e in found if span_prob(e, tags, probs, labels) >= decoding.min_entity_prob]
            if decoding.join_negations:
                found = attach_negations(found, words)
            t, b = decoding.entity_score_temperature, decoding.entity_score_shift
            found = [replace(e, score=calibrated(span_score(e, probs, labels), t, b)) for e in found]
            spans.append(self._gate(found, per_word["gate"][si]) if self.gated else found)
        return spans

    @property
    def gated(self) -> bool:
        """Whether relation copies are gated: the decoding sets a `copy_gate` and the entity model has the
        gate head that scores each entity's chance of taking part in a relation (`relation_gate`)."""
        return self.decoding.copy_gate > 0 and self.ner is not None and "gate" in self.ner.spec.labels

    def _gate(self, spans: Sequence[WordSpan], logits: np.ndarray) -> list[WordSpan]:
        types = self.ner.spec.labels["gate"]
        return [replace(e, relates=relation_gate(e, logits, types)) for e in spans]

    def _per_word(
        self,
        sentence_words: Sequence[Sequence[str]],
        heads: Sequence[str],
        documents: Sequence[int] | None = None,
    ) -> dict[str, list[np.ndarray]]:
        """The entity model's `heads` per word of each sentence, all sentences in one batched pass (see
        `tag_entities` for `documents`). Sentences longer than the model are cut into overlapping windows;
        each word takes its outputs from the window where it has the most context on both sides."""
        tagger = self.ner
        spec = tagger.spec
        overlap = min(self.overlap, (spec.max_pieces - tagger.pieces.special) // 4)
        inputs: list[Pieces] = []
        owners: list[tuple[int, int, int]] = []  # (sentence, window start, window end)
        for first, last in _runs(documents, len(sentence_words)):
            doc = sentence_words[first:last]
            for si, a, b, p in tagging_inputs(tagger.pieces, doc, spec.max_pieces, spec.context, overlap):
                inputs.append(p)
                owners.append((first + si, a, b))
        # A batch-dependent (int8) entity model runs each sentence's windows apart, as the relation copies
        # are: a sentence's entities then depend on what it reads alone (its words, and its neighbours for a
        # model trained with context), not on its batch mates (at 0.91x the speed of batching across the
        # document on a 2-core CPU, BENCHMARKS.md).
        owner = [si for si, _, _ in owners]
        outputs = run_heads(
            tagger, inputs, heads, self.batch_size, self.max_tokens, self.max_padding, owner, self.workers
        )
        margins = [np.full(len(words), -1) for words in sentence_words]
        per_word = {
            head: [
                np.zeros((len(words), len(tagger.spec.labels[head])), np.float32) for words in sentence_words
            ]
            for head in heads
        }
        for n, (si, a, b) in enumerate(owners):
            for k in range(a, b):
                margin = min(k - a, b - 1 - k)
                if margin > margins[si][k]:
                    margins[si][k] = margin
                    for head in heads:
                        per_word[head][si][k] = outputs[head][n][k - a]
        return per_word

    def relations(
        self, text: str, sentences: Sequence[Sentence], spans: Sequence[Sequence[WordSpan]]
    ) -> list[list[WordRelation]]:
        """Relations per sentence of `text` (see `tag_relations`)."""
        return self.tag_relations(_words(text, sentences), spans)

    def tag_relations(
        self, sentence_words: Sequence[Sequence[str]], spans: Sequence[Sequence[WordSpan]]
    ) -> list[list[WordRelation]]:
        """Relations per sentence, each scored: one marked copy per entity, all copies batched together,
        also across documents (a batch-dependent model's one sentence at a time: `Tagger.batch_dependent`)."""
        if self.re is None:
            return [[] for _ in sentence_words]
        tagger = self.re
        context = min(self.decoding.copy_context or tagger.spec.max_pieces, tagger.spec.max_pieces)
        budget = context - tagger.pieces.special
        inputs: list[Pieces] = []
        owners: list[tuple[int, int, int, list[int]]] = []  # (sentence, marked span, window start, index)
        for si, words in enumerate(sentence_words):
            if len(spans[si]) < 2:
                continue  # a lone entity has no partner: its copy could only read "no relation"
            for k, span in enumerate(spans[si]):
                if span.relates is not None and span.relates < self.decoding.copy_gate:
                    continue  # the gate: this entity probably has no partner; a partner's copy still reads it
                marked, index = mark(words, span, tagger.spec.typed_markers)
                lengths = tagger.pieces.lengths(marked)
                lo, hi = context_window(lengths, index[span.first] - 1, index[span.last] + 1, budget)
                inputs.append(tagger.pieces.encode(marked[lo:hi], tagger.spec.max_pieces))
                owners.append((si, k, lo, index))
        logits = run_batched(
            tagger,
            inputs,
            "relation",
            self.batch_size,
            self.max_tokens,
            self.max_padding,
            sentences=[o[0] for o in owners],
            workers=self.workers,
        )
        labels = tagger.spec.labels["relation"]
        if self.decoding.pairs == "pair":
            readings: list[dict[tuple[int, int], np.ndarray]] = [{} for _ in sentence_words]
            for (si, k, lo, index), lg in zip(owners, logits, strict=True):
                probs = _softmax(lg)
                for j, span in enumerate(spans[si]):
                    # A partner outside the context window is read only from its own copy.
                    if j != k and 0 <= index[span.first] - lo < len(probs):
                        readings[si][(k, j)] = probs[index[span.first] - lo]
            decided = [
                pair_relations(
                    r, labels, self.decoding.none_weight, [s.type for s in spans[si]], self.signatures
                )
                for si, r in enumerate(readings)
            ]
        else:
            decided = self._either(owners, logits, labels, spans, len(sentence_words))
        t, b = self.decoding.relation_score_temperature, self.decoding.relation_score_shift
        # A relation's score takes in its entities': end to end it is right only where they are too.
        kept = []
        for rels, found in zip(decided, spans, strict=True):
            scored = [
                replace(r, score=joint_score(calibrated(r.score, t, b), found[r.arg1], found[r.arg2]))
                for r in rels
            ]
            kept.append([r for r in scored if r.score >= self.decoding.min_relation_score])
        return kept

    @staticmethod
    def _either(
        owners: Sequence[tuple[int, int, int, list[int]]],
        logits: Sequence[np.ndarray],
        labels: Sequence[str],
        spans: Sequence[Sequence[WordSpan]],
        sentences: int,
    ) -> list[list[WordRelation]]:
        """Every relation either copy of a pair reads ("either" decoding), merged."""
        found: list[list[WordRelation]] = [[] for _ in range(sentences)]
        for (si, k, lo, index), lg in zip(owners, logits, strict=True):
            pred = lg.argmax(-1)
            sure = _softmax(lg).max(-1)
            n = len(pred)
            # Words outside the context window get no relation.
            tags = [labels[int(pred[j - lo])] if 0 <= j - lo < n else "0" for j in index]
            confidence = [float(sure[j - lo]) if 0 <= j - lo < n else 0.0 for j in index]
            found[si].extend(decode_relations(k, tags, spans[si], confidence))
        return [merge_relations(f) for f in found]

    def extract(
        self, name: str, text: str, relations: bool = True, timings: dict[str, float] | None = None
    ) -> Document:
        """Entities and (optionally) relations of `text` as a brat document with offsets into `text`.
        With `timings`, the milliseconds spent in each stage are stored in it."""
        return self.extract_many([(name, text)], relations, timings)[0]

    def extract_many(
        self,
        documents: Sequence[tuple[str, str]],
        relations: bool = True,
        timings: dict[str, float] | None = None,
    ) -> list[Document]:
        """`extract` for several (name, text) documents, their sentences in one batched pass per stage, which
        fills a batch better than one document each. With `timings`, each stage's milliseconds for all."""
        clock = [time.perf_counter()]

        def lap(stage: str) -> None:
            clock.append(time.perf_counter())
            if timings is not None:
                timings[stage] = round((clock[-1] - clock[-2]) * 1000, 3)

        per_doc = [segment(text) for _, text in documents]
        words = [
            w
            for (_, text), sentences in zip(documents, per_doc, strict=True)
            for w in _words(text, sentences)
        ]
        doc_of = [d for d, sentences in enumerate(per_doc) for _ in sentences]
        lap("segmentation")
        spans = self.tag_entities(words, doc_of) if words else []
        lap("ner")
        use_re = relations and self.re is not None
        rels = self.tag_relations(words, spans) if use_re else [[] for _ in words]
        lap("relations")
        docs = []
        first = 0
        for (name, text), sentences in zip(documents, per_doc, strict=True):
            last = first + len(sentences)
            docs.append(decode_document(name, text, sentences, spans[first:last], rels[first:last]))
            first = last
        lap("decoding")
        return docs

    def relations_for(self, name: str, text: str, entities: Sequence[Entity]) -> Document:
        """Track 2: relations between given entities. Sentences are joined around given entities that
        razdel would split, and words cut at their boundaries, as for gold data. Every copy runs: the copy
        gate would need an entity-model pass of its own here, which costs more than the copies it skips
        (BENCHMARKS.md, "Relations given entities")."""
        sentences = segment_around(text, entities)
        spans = _place(sentences, entities)
        words = _words(text, sentences)
        rels = self.tag_relations(words, spans)
        return decode_document(name, text, sentences, spans, rels)


def segment_around(text: str, entities: Sequence[Entity]) -> list[Sentence]:
    """Sentences of `text` as the relation stage reads given entities: joined where razdel would split an
    entity, words cut at entity boundaries."""
    return segment(
        text,
        keep_together=[(e.start, e.end) for e in entities],
        cuts=[x for e in entities for x in (e.start, e.end)],
    )


def _runs(documents: Sequence[int] | None, n: int) -> list[tuple[int, int]]:
    """`[first, last)` of each run of consecutive sentences with one document number (None: one run)."""
    if documents is None:
        return [(0, n)] if n else []
    if len(documents) != n:
        raise ValueError(f"{len(documents)} document numbers for {n} sentences")
    starts = [i for i in range(n) if i == 0 or documents[i] != documents[i - 1]]
    return list(zip(starts, [*starts[1:], n], strict=True))


def _words(text: str, sentences: Sequence[Sentence]) -> list[list[str]]:
    return [[text[a:b] for a, b in s.words] for s in sentences]


def _place(sentences: Sequence[Sentence], entities: Sequence[Entity]) -> list[list[WordSpan]]:
    """Given entities on the words of their sentences (entities must not overlap; the caller checks)."""
    starts = [s.start for s in sentences]
    spans: list[list[WordSpan]] = [[] for _ in sentences]
    for e in sorted(entities, key=lambda e: (e.start, e.end)):
        si = bisect.bisect_right(starts, e.start) - 1
        rng = align(sentences[si].words, e.start, e.end) if si >= 0 else None
        if rng is not None:
            spans[si].append(WordSpan(e.type, *rng))
    return spans
