"""Small real inputs that tests build for themselves: a slice of the corpus and a tiny random encoder."""

from __future__ import annotations

from pathlib import Path

from app.text.brat import format_ann, read_corpus, write_text
from app.text.segment import sentence_spans


def tiny_corpus(corpus: Path, out: Path, documents: int = 4, entities: int = 40) -> Path:
    """The opening sentences of the first `documents` corpus documents, enough to hold about `entities`
    entities each, with their annotations."""
    out.mkdir(parents=True, exist_ok=True)
    for doc in read_corpus(corpus / "train_part_1")[:documents]:
        spans = sentence_spans(doc.text, [(e.start, e.end) for e in doc.entities])
        ends = sorted(e.end for e in doc.entities)
        target = ends[min(entities, len(ends)) - 1]
        cut = next(b for _, b in spans if b >= target)
        ents = [e for e in doc.entities if e.end <= cut]
        kept = {e.id for e in ents}
        rels = [r for r in doc.relations if r.arg1 in kept and r.arg2 in kept]
        write_text(out / f"{doc.name}.txt", doc.text[:cut])
        write_text(out / f"{doc.name}.ann", format_ann(ents, rels))
    return out


def tiny_encoder(corpus: Path, out: Path) -> Path:
    """A 2-layer BERT with random weights and a unigram tokenizer trained on the corpus text, saved as a
    Hugging Face directory like any pretrained encoder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.rglob("*.txt"))]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=800, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    fast.save_pretrained(out)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=1,
    )
    # Seeded: the random weights are the tiny models' starting point, and from some starts the tiny NER
    # model learned no entity in its 8 epochs, which left the comparisons of its output comparing nothing.
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    return out


def tiny_models(corpus_dir: Path, root: Path) -> tuple[Path, Path, Path]:
    """A tiny corpus slice and tiny NER and relation checkpoints trained on it (typed markers). The NER
    model trains long enough to predict entities, so comparisons of its output compare something."""
    from app.cli import main

    corpus = tiny_corpus(corpus_dir, root / "corpus")
    encoder = tiny_encoder(corpus, root / "encoder")
    runs = (
        ("ner", ["epochs=8", "lr=5e-3", "patience=8"]),
        ("re", ["epochs=3", "lr=3e-3", "typed_markers=true"]),
    )
    for task, extra in runs:
        settings = [
            f"corpus={corpus}",
            f"encoder={encoder}",
            f"output={root / task}",
            "batch_size=8",
            "dev_fraction=0.25",
            *extra,
        ]
        assert main(["train", task, *[a for s in settings for a in ("--set", s)]]) == 0
    return corpus, root / "ner" / "best", root / "re" / "best"


def tiny_ner_run(corpus_dir: Path, root: Path, epochs: int, *extra: str) -> tuple[Path, Path]:
    """A tiny corpus slice and a tiny NER checkpoint trained on it for `epochs` at a high learning rate,
    with `extra` settings (`key=value`): the corpus and the run's output directory."""
    from app.cli import main

    corpus = tiny_corpus(corpus_dir, root / "corpus")
    encoder = tiny_encoder(corpus, root / "encoder")
    out = root / "ner"
    settings = [f"corpus={corpus}", f"encoder={encoder}", f"output={out}", f"epochs={epochs}", "batch_size=8"]
    settings += ["lr=5e-3", "warmup=0", f"patience={epochs}", "dev_fraction=0.25", *extra]
    assert main(["train", "ner", *[a for s in settings for a in ("--set", s)]]) == 0
    return corpus, out
