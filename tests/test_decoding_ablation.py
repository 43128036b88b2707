"""The decoding ablation's grid of relation bars and weights of 'no relation', on the tiny bundle: every
pair of settings decoded from one model pass, and the two-fold choice made over the pairs."""

from __future__ import annotations

import json
from pathlib import Path

from training.scripts.decoding_ablation import main


def test_relation_bars_are_tried_at_each_weight_of_no_relation(
    tiny_checkpoints: tuple[Path, Path, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    corpus = tiny_checkpoints[0]
    out = tmp_path / "grid.json"
    settings = ["--variant", "fp32", "--skip-standard", "--relation-bars", "0,0.3", "--none-weights", "0.3,1"]
    main([str(tiny_bundle), str(corpus), *settings, "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["none_weight"], r["min_relation_score"]) for r in rows] == [
        (0.3, 0.0),
        (0.3, 0.3),
        (1.0, 0.0),
        (1.0, 0.3),
    ]
    # The weight moves only the relations: entities are the same in every row.
    assert len({r["ner_f1"] for r in rows}) == 1
    # A lower weight of 'no relation' only adds relations, so recall cannot fall; a bar only removes them.
    by = {(r["none_weight"], r["min_relation_score"]): r for r in rows}
    assert by[(0.3, 0.0)]["re_gold_recall"] >= by[(1.0, 0.0)]["re_gold_recall"]
    assert by[(0.3, 0.0)]["e2e_recall"] >= by[(0.3, 0.3)]["e2e_recall"]
    chosen = result["relation_bar_two_fold"]["bars"]
    assert len(chosen) == 2 and all(tuple(c) in by for c in chosen)
