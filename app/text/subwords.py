"""Words to encoder inputs: sub-word pieces, the first piece of each word, entity markers and windows.

Built on the `tokenizers` library alone (a `tokenizer.json`), so the service needs no transformers; training
passes the same `tokenizers.Tokenizer` (a fast Hugging Face tokenizer's `backend_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from app.text.tags import ENTITY_TYPES, WordSpan


def marker_tokens(typed: bool) -> list[str]:
    """The special tokens put around a marked entity: `<e> </e>`, or one pair per entity type."""
    if not typed:
        return ["<e>", "</e>"]
    return [m for t in ENTITY_TYPES for m in (f"<e:{t}>", f"</e:{t}>")]


def mark(words: Sequence[str], span: WordSpan, typed: bool) -> tuple[list[str], list[int]]:
    """`words` with marker words around `span`. Returns the new word list and, for each original word,
    its index in the new list (the markers themselves carry no label)."""
    open_, close = (f"<e:{span.type}>", f"</e:{span.type}>") if typed else ("<e>", "</e>")
    marked = [*words[: span.first], open_, *words[span.first : span.last + 1], close, *words[span.last + 1 :]]
    index = [k + (k >= span.first) + (k > span.last) for k in range(len(words))]
    return marked, index


@dataclass(frozen=True)
class Pieces:
    """Encoder input for one word sequence: piece ids with the tokenizer's special tokens around them, and
    for each word the position of its first piece in `ids`."""

    ids: list[int]
    first: list[int]


class WordPieces:
    """Sub-word pieces of words, one word at a time (pre-tokenised input treats each word on its own, so
    this equals encoding the sentence) with a cache: reports repeat their vocabulary endlessly."""

    def __init__(self, tokenizer: Tokenizer, cache_size: int = 200_000) -> None:
        self.tokenizer = tokenizer
        probe = tokenizer.encode(["x"], is_pretokenized=True, add_special_tokens=True)
        inside = [k for k, w in enumerate(probe.word_ids) if w is not None]
        self.prefix = probe.ids[: inside[0]]
        self.suffix = probe.ids[inside[-1] + 1 :]
        self.unk = tokenizer.token_to_id("<unk>")
        if self.unk is None:
            self.unk = tokenizer.token_to_id("[UNK]") or 0
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

    def word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self.tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).ids
            # A word the normaliser erases entirely (a lone control character) still needs a position.
            ids = ids or [self.unk]
            if len(self._cache) < self._cache_size:
                self._cache[word] = ids
        return ids

    def lengths(self, words: Sequence[str]) -> list[int]:
        return [len(self.word(w)) for w in words]

    def encode(self, words: Sequence[str], max_pieces: int | None = None) -> Pieces:
        """Pieces for `words`; with `max_pieces`, a word is cut to its first pieces so the whole fits
        (only a single word longer than a window needs this: the first piece is what gets a label)."""
        ids = list(self.prefix)
        first = []
        for w in words:
            first.append(len(ids))
            ids.extend(self.word(w))
        ids.extend(self.suffix)
        if max_pieces is not None and len(ids) > max_pieces:
            if len(words) != 1:
                raise ValueError(f"{len(ids)} pieces exceed {max_pieces}: cut the words into windows first")
            ids = [*ids[: max_pieces - len(self.suffix)], *self.suffix]
        return Pieces(ids, first)

    @property
    def special(self) -> int:
        """How many special pieces wrap every sequence."""
        return len(self.prefix) + len(self.suffix)


def windows(lengths: Sequence[int], budget: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Cut a sequence of words (each `lengths[k]` pieces long) into `[start, end)` word windows of at most
    `budget` pieces each, consecutive windows sharing about `overlap` pieces of context.

    A single word longer than `budget` gets a window of its own (its pieces are then cut by the caller).
    """
    spans = []
    start, n = 0, len(lengths)
    while start < n:
        end, used = start, 0
        while end < n and (used + lengths[end] <= budget or end == start):
            used += lengths[end]
            end += 1
        spans.append((start, end))
        if end == n:
            break
        # Step back for shared context, but never so far that the next window could not pass `end`.
        back, shared, room = end, 0, min(overlap, budget - lengths[end])
        while back - 1 > start and shared + lengths[back - 1] <= room:
            back -= 1
            shared += lengths[back]
        start = back
    return spans


def context_window(lengths: Sequence[int], first: int, last: int, budget: int) -> tuple[int, int]:
    """The `[start, end)` word window around words `first..last` that fits `budget` pieces, growing one word
    at a time on the side with less context so the marked entity sits near the middle."""
    start, end = first, last + 1
    used = sum(lengths[start:end])
    while True:
        left_ok = start > 0 and used + lengths[start - 1] <= budget
        right_ok = end < len(lengths) and used + lengths[end] <= budget
        if not (left_ok or right_ok):
            return start, end
        if left_ok and (not right_ok or first - start <= end - 1 - last):
            start -= 1
            used += lengths[start]
        else:
            used += lengths[end]
            end += 1


def around(lengths: Sequence[int], start: int, end: int, context: int, budget: int) -> tuple[int, int]:
    """The `[lo, hi)` word window that puts up to `context` pieces of whole words on each side of the centre
    `[start, end)`, the nearest words first, all of it within `budget` pieces. The two sides get equal room:
    a centre near the budget gets less context, one at or over it none."""
    side = min(context, max(budget - sum(lengths[start:end]), 0) // 2)
    lo, used = start, 0
    while lo > 0 and used + lengths[lo - 1] <= side:
        lo -= 1
        used += lengths[lo]
    hi, used = end, 0
    while hi < len(lengths) and used + lengths[hi] <= side:
        used += lengths[hi]
        hi += 1
    return lo, hi


def tagging_inputs(
    pieces: WordPieces,
    sentences: Sequence[Sequence[str]],
    max_pieces: int,
    context: int = 0,
    overlap: int = 0,
) -> list[tuple[int, int, int, Pieces]]:
    """The entity model's inputs for the sentences of one document, in order: each sentence cut into windows
    of at most `max_pieces` (consecutive windows sharing about `overlap` pieces), each window with up to
    `context` pieces of the document's neighbouring words on either side.

    Returns `(sentence, window start, window end, pieces)`, where `pieces.first` holds the first piece of the
    window's own words only: the context is read, never labelled. Training and the service both build their
    inputs here, so a model reads at serving time exactly the context it was trained with."""
    budget = max_pieces - pieces.special
    stream = [w for words in sentences for w in words]
    lengths = pieces.lengths(stream) if context else []
    out = []
    offset = 0
    for si, words in enumerate(sentences):
        own = lengths[offset : offset + len(words)] if context else pieces.lengths(words)
        for a, b in windows(own, budget, overlap):
            if context:
                lo, hi = around(lengths, offset + a, offset + b, context, budget)
                p = pieces.encode(stream[lo:hi], max_pieces)
                p = Pieces(p.ids, p.first[offset + a - lo : offset + b - lo])
            else:
                p = pieces.encode(words[a:b], max_pieces)
            out.append((si, a, b, p))
        offset += len(words)
    return out
