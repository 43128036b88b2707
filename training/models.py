"""The paper's tagger: a transformer encoder, dropout, and one linear head per tag set.

NER has one head (`entity`, BIO over 8 types); the relation model has two (`relation` and `entity`), the
loss a weighted sum. The heads score every piece; the loss and the decoders read each word's first piece.
A checkpoint is a Hugging Face directory (the encoder's `config.json` and `model.safetensors`, the tokenizer
with its marker tokens) plus `heads.safetensors` and `tagger.json` (heads, labels, markers, length).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from app.pipeline import Tagger, TaggerSpec
from app.text.subwords import WordPieces, marker_tokens
from app.text.tags import Transitions
from training.crf import BioCRF

TAGGER_FILE = "tagger.json"
HEADS_FILE = "heads.safetensors"


class SequenceTagger(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        labels: dict[str, tuple[str, ...]],
        dropout: float,
        crf: BioCRF | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.labels = labels
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(names)) for name, names in labels.items()})
        self.crf = crf  # the entity head's CRF (training/crf.py), where it is trained with one

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = self.dropout(states)
        return {name: head(states) for name, head in self.heads.items()}


# Heads fitted on a trained model rather than trained with it (the copy gate, training/gate.py): a run that
# starts from a model, or an average of models, drops them, since they would go stale; fit them again after.
FITTED_AFTER = ("gate",)


def drop_fitted_heads(model: SequenceTagger, keep: set[str] = frozenset()) -> list[str]:
    """Remove the heads of FITTED_AFTER not in `keep`; returns their names."""
    dropped = [h for h in FITTED_AFTER if h in model.labels and h not in keep]
    for head in dropped:
        del model.heads[head]
    model.labels = {k: v for k, v in model.labels.items() if k not in dropped}
    return dropped


def load_tokenizer(source: str, typed_markers: bool | None):
    """A fast tokenizer from a name or directory; with `typed_markers` not None, the marker tokens added."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: a fast tokenizer (tokenizer.json) is needed for word alignment")
    if typed_markers is not None:
        tokenizer.add_tokens(marker_tokens(typed_markers), special_tokens=True)
    return tokenizer


def new_tagger(
    encoder_source: str,
    labels: dict[str, tuple[str, ...]],
    dropout: float,
    typed_markers: bool | None,
    layers: int = 0,
    crf: bool = False,
) -> tuple[SequenceTagger, object]:
    """A tagger on a pretrained encoder (any Hugging Face name or local directory), on its first `layers`
    transformer layers only where `layers` > 0; with `crf`, a CRF over the entity head."""
    tokenizer = load_tokenizer(encoder_source, typed_markers)
    encoder = _encoder(encoder_source)
    if layers:
        keep_layers(encoder, layers, encoder_source)
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    if size > encoder.get_input_embeddings().num_embeddings:
        encoder.resize_token_embeddings(size)
    return SequenceTagger(encoder, labels, dropout, BioCRF(labels["entity"]) if crf else None), tokenizer


def keep_layers(encoder: nn.Module, layers: int, source: str | Path) -> None:
    """Cut a BERT-style encoder to its first `layers` transformer layers, in place."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    if stack is None or not 0 < layers <= len(stack):
        have = len(stack) if stack is not None else "no BERT-style layer stack"
        raise ValueError(f"{source}: cannot keep {layers} encoder layers (it has {have})")
    encoder.encoder.layer = stack[:layers]
    encoder.config.num_hidden_layers = layers


def _encoder(source: str | Path) -> nn.Module:
    # The taggers read token states only; BERT-style models would otherwise build an untrained pooler.
    try:
        return AutoModel.from_pretrained(source, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(source)


def save_tagger(model: SequenceTagger, tokenizer, out: Path, meta: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()}, str(out / HEADS_FILE))
    info = {"labels": {k: list(v) for k, v in model.labels.items()}, **meta}
    if model.crf is not None:
        info["transitions"] = model.crf.transitions().as_json()
    (out / TAGGER_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")


def tagger_transitions(info: dict) -> Transitions | None:
    """The CRF transitions a checkpoint's `tagger.json` holds, if any."""
    if not info.get("transitions"):
        return None
    return Transitions.from_json(info["transitions"], len(info["labels"]["entity"]))


def load_tagger(path: Path, device: str = "cpu") -> tuple[SequenceTagger, object, dict]:
    path = Path(path)
    info = json.loads((path / TAGGER_FILE).read_text())
    labels = {k: tuple(v) for k, v in info["labels"].items()}
    encoder = _encoder(path)
    transitions = tagger_transitions(info)
    crf = BioCRF(labels["entity"], transitions) if transitions else None
    model = SequenceTagger(encoder, labels, info.get("dropout", 0.1), crf)
    model.heads.load_state_dict(load_file(str(path / HEADS_FILE)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer, info


def torch_tagger(
    model: SequenceTagger, tokenizer, max_pieces: int, typed_markers: bool = False, context: int = 0
) -> Tagger:
    """The pipeline's view of a torch model: the same code path the service runs on ONNX."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        return {k: v.float().cpu().numpy() for k, v in logits.items()}

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    transitions = model.crf.transitions() if model.crf is not None else None
    spec = TaggerSpec(model.labels, max_pieces, typed_markers, pad, transitions, context)
    return Tagger(run, WordPieces(tokenizer.backend_tokenizer), spec)
