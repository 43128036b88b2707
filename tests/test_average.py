"""Checkpoint averaging: the mean of two taggers' weights, refused across different models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.average import average_checkpoints, main
from training.models import load_tagger, save_tagger


def test_the_average_is_the_weighted_mean_of_every_weight(
    tiny_checkpoints: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, ner, _ = tiny_checkpoints
    a, tok, meta = load_tagger(ner)
    b, _, _ = load_tagger(ner)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    save_tagger(b, tok, tmp_path / "b", {k: v for k, v in meta.items() if k != "labels"})

    out = average_checkpoints([ner, tmp_path / "b"], tmp_path / "avg", [3.0, 1.0])
    avg, _, info = load_tagger(out)
    sa, sb, sm = a.state_dict(), b.state_dict(), avg.state_dict()
    for k, v in sm.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * sa[k] + 0.25 * sb[k])
    assert [s["weight"] for s in info["averaged"]] == [3.0, 1.0]
    assert "seed 13" in info["averaged"][0]["about"]  # each member's run, as the model card names it
    assert info["max_pieces"] == meta["max_pieces"]


def test_taggers_of_different_models_are_refused(
    tiny_checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ner, re = tiny_checkpoints
    assert main([str(ner), str(re), "--out", str(tmp_path / "x")]) == 2
    assert "only taggers of one model average" in capsys.readouterr().err
    assert main([str(ner), "--out", str(tmp_path / "x")]) == 2
    assert main([str(ner), str(ner), "--out", str(tmp_path / "x"), "--weights", "1"]) == 2
    assert not (tmp_path / "x").exists()
