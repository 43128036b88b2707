"""Entity models' logits averaged (training/scripts/ensemble.py): the mean tagger behind the dev figures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from app.pipeline import Pipeline
from app.text.brat import read_corpus
from app.text.tags import Transitions
from training.models import load_tagger, torch_tagger
from training.scripts.ensemble import mean_tagger


def test_the_mean_tagger_averages_logits_and_transitions(tiny_checkpoints: tuple[Path, Path, Path]) -> None:
    corpus, ner, _ = tiny_checkpoints
    a, tok, meta = load_tagger(ner)
    b, _, _ = load_tagger(ner)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    first = torch_tagger(a, tok, meta["max_pieces"])
    second = torch_tagger(b, tok, meta["max_pieces"])
    size = len(first.spec.labels["entity"])
    scores = Transitions((1.0,) * size, ((2.0,) * size,) * size, (-4.0,) * size)
    second = replace(second, spec=replace(second.spec, transitions=scores))

    pieces = first.pieces.encode(read_corpus(corpus)[0].text.split()[:20])
    ids = np.array([pieces.ids], dtype=np.int64)
    mask = np.ones_like(ids)
    mean = mean_tagger([first, second])
    got, one, two = (t.run(ids, mask)["entity"] for t in (mean, first, second))
    assert not np.allclose(one, two)
    np.testing.assert_allclose(got, (one + two) / 2, rtol=1e-5, atol=1e-6)
    # A model without a CRF counts as one whose transitions are all 0.
    assert mean.spec.transitions == Transitions((0.5,) * size, ((1.0,) * size,) * size, (-2.0,) * size)
    assert mean_tagger([first, first]).spec.transitions is None


def test_a_model_averaged_with_itself_finds_what_it_finds_alone(
    tiny_checkpoints: tuple[Path, Path, Path],
) -> None:
    corpus, ner, _ = tiny_checkpoints
    model, tok, meta = load_tagger(ner)
    alone = torch_tagger(model, tok, meta["max_pieces"])
    text = read_corpus(corpus)[0].text[:3000]
    found = Pipeline(ner=alone).extract("d", text, relations=False).entities
    assert found
    assert Pipeline(ner=mean_tagger([alone, alone])).extract("d", text, relations=False).entities == found
