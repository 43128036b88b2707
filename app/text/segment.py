"""Sentences and words with character offsets into the text exactly as given.

One implementation for training and serving: the models tag words, so both sides must agree on where a word
starts. razdel finds sentences and tokens; two refinements follow the RuREBus annotation conventions:

* Sentences also end at line breaks. The reports are tables and headings as often as prose; razdel runs a
  whole page of unpunctuated lines into one "sentence". On the training corpus this halves sentence length
  (median 24 -> 12 tokens, max 954 -> 189) and no entity contains a line break.
* Tokens are cut further wherever the character class changes (letters, digits, anything else one character
  at a time): annotators end entities inside hyphenated compounds (`дорожно-|транспортных`), at digits glued
  to words (`2019|г`) and at quotes and slashes.

At training time (and in the lossless round trip) the gold annotations are known: sentences that razdel
split inside an entity or a relation are joined, and words are cut at every gold boundary that still falls
inside one. Serving passes no gold and gets the plain segmentation.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from razdel import sentenize, tokenize


@dataclass(frozen=True)
class Sentence:
    """A sentence `[start, end)` and its words, each a `(start, end)` pair, all offsets into the text."""

    start: int
    end: int
    words: tuple[tuple[int, int], ...]


_LINE_BREAK = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def _char_class(ch: str) -> str:
    if ch.isalpha():
        return "L"
    if ch.isdigit():
        return "D"
    return "P"


def _split_token(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut one razdel token into runs of letters, runs of digits and single other characters.

    Combining marks and format characters (soft hyphen, zero-width joiner) stay with the character before
    them, so `й` written as `и` + U+0306 is one letter run.
    """
    pieces: list[tuple[int, int]] = []
    prev = ""
    for i in range(start, end):
        ch = text[i]
        cls = _char_class(ch)
        attaches = pieces and unicodedata.category(ch) in ("Mn", "Mc", "Me", "Cf")
        if attaches or (pieces and cls == prev and cls != "P"):
            pieces[-1] = (pieces[-1][0], i + 1)
            continue
        pieces.append((i, i + 1))
        prev = cls
    return pieces


def _lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split `[start, end)` at line breaks, trimming whitespace; empty parts are dropped."""
    parts = []
    pos = start
    for m in _LINE_BREAK.finditer(text, start, end):
        parts.append((pos, m.start()))
        pos = m.end()
    parts.append((pos, end))
    trimmed = []
    for a, b in parts:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            trimmed.append((a, b))
    return trimmed


def _merge(spans: list[tuple[int, int]], keep_together: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join consecutive sentence spans so that no `keep_together` span crosses a sentence boundary."""
    if not spans:
        return spans
    starts = [a for a, _ in spans]
    # join[i] is True when sentence i and i + 1 must be one.
    join = [False] * len(spans)
    for a, b in keep_together:
        first = max(bisect.bisect_right(starts, a) - 1, 0)
        last = max(bisect.bisect_right(starts, b - 1) - 1, 0)
        for i in range(first, last):
            join[i] = True
    merged = [spans[0]]
    for i in range(1, len(spans)):
        if join[i - 1]:
            merged[-1] = (merged[-1][0], spans[i][1])
        else:
            merged.append(spans[i])
    return merged


def sentence_spans(text: str, keep_together: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Sentence spans: razdel sentences cut at line breaks, then joined around `keep_together` spans."""
    spans = []
    for s in sentenize(text):
        spans.extend(_lines(text, s.start, s.stop))
    return _merge(spans, keep_together)


def word_spans(text: str, start: int, end: int, cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Words of `text[start:end]`: razdel tokens refined by character class, also cut at each offset in
    `cuts` that falls strictly inside a word."""
    words: list[tuple[int, int]] = []
    for tok in tokenize(text[start:end]):
        words.extend(_split_token(text, start + tok.start, start + tok.stop))
    cut_set = sorted(set(cuts))
    if not cut_set:
        return words
    refined = []
    for a, b in words:
        lo, hi = bisect.bisect_right(cut_set, a), bisect.bisect_left(cut_set, b)
        pos = a
        for c in cut_set[lo:hi]:
            refined.append((pos, c))
            pos = c
        refined.append((pos, b))
    return refined


def segment(
    text: str,
    keep_together: Iterable[tuple[int, int]] = (),
    cuts: Iterable[int] = (),
) -> list[Sentence]:
    """Cut `text` into sentences of words; words never contain whitespace and never overlap.

    `keep_together`: spans (gold entities, the extent of gold relations) no sentence boundary may cross.
    `cuts`: offsets (gold entity boundaries) that must fall between words.
    Serving calls `segment(text)`; only training and the round trip pass gold.
    """
    cut_list = sorted(set(cuts))
    sentences = []
    for a, b in sentence_spans(text, list(keep_together)):
        lo, hi = bisect.bisect_right(cut_list, a), bisect.bisect_left(cut_list, b)
        words = word_spans(text, a, b, cut_list[lo:hi])
        if words:
            sentences.append(Sentence(a, b, tuple(words)))
    return sentences
