"""One training run's configuration: a TOML file plus `key=value` overrides, saved resolved beside every
checkpoint. Defaults are the paper's best rows (NER: Table 4; relations: Table 6)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import InputError
from app.overrides import field_types, parse_overrides


@dataclass
class TrainConfig:
    task: str = "ner"  # "ner" or "re"
    corpus: str = "../shared/rurebus"
    encoder: str = "encoders/e5-small-ru"  # any Hugging Face encoder name or local directory
    # Start from a trained tagger instead of a fresh head on `encoder`: a checkpoint directory (`runs/X/best`)
    # or a model bundle, whose model of this task is rebuilt in torch (training/from_onnx.py). For further
    # training of shipped weights (a longer schedule, another loss) and for students of a teacher. A CRF the
    # model has is kept and trained on, whatever `crf` says; `crf = true` adds one to a model without.
    init: str = ""
    output: str = "runs/ner"
    seed: int = 13
    # The dev split is text-wise and seeded separately, so runs with different seeds share one dev set.
    split_seed: int = 13
    dev_fraction: float = 0.3
    epochs: int = 5
    batch_size: int = 16
    lr: float = 5e-5
    # Learning rate of the freshly initialised linear heads; 0 means `lr`, as in the paper. At the paper's
    # relation lr (2e-5) a head moves ~0.015 per weight in one epoch of 759 batches: measured, the relation
    # model then gave every word P(no relation) = 0.75 whatever the word, and dev F1 0.
    head_lr: float = 0.0
    weight_decay: float = 0.1
    dropout: float = 0.2
    # Keep only the encoder's first k layers (0: all): a shallower, cheaper student of the same encoder, for
    # the relation stage's FLOPs (issue #24; plan in training/configs/sweep-gpu-student.toml).
    encoder_layers: int = 0
    # NER: train the entity head as a linear-chain CRF over word tags (training/crf.py) instead of each word
    # alone; its transition scores join the service's Viterbi decoding (issue 23).
    crf: bool = False
    # The transitions' learning rate: they start at zero, and at the encoder's rate (Adam moves a weight
    # about lr a step) would move by 0.01 in the 466 steps of an epoch.
    crf_lr: float = 1e-2
    warmup: float = 0.1
    max_pieces: int = 256
    # NER: pieces of the document's neighbouring words read on either side of each sentence, never labelled
    # (app/text/subwords.py: tagging_inputs). The service reads the same context (the manifest's `context`).
    context: int = 0
    patience: int = 2  # epochs without a better dev F1 before stopping
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints
    # Relation model only.
    ner_weight: float = 0.0  # weight of the entity-tag loss beside the relation loss
    typed_markers: bool = False
    keep_negatives: float = 1.0  # fraction of marked copies without any relation kept for training
    # Copies holding a relation type seen in fewer than `rare_below` training copies are repeated
    # `rare_repeat` times (1: off).
    rare_repeat: int = 1
    rare_below: int = 500
    ner_model: str = ""  # a trained NER checkpoint, for the end-to-end evaluation
    # Small runs (tests, smoke checks).
    max_documents: int = 0  # 0: all
    max_steps: int = 0  # 0: no limit
    # Seconds of wall time (data preparation included) after which training stops at the next step and the
    # run ends as if its last epoch were done: dev evaluation, best checkpoint, metrics. 0: no limit.
    time_limit: float = 0.0
    device: str = "auto"

    @classmethod
    def load(cls, path: Path | None, overrides: list[str] = ()) -> TrainConfig:
        values: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        fields = field_types(cls)
        unknown = set(values) - set(fields)
        if unknown:
            raise InputError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(fields)}")
        values.update(parse_overrides(overrides, fields))
        config = cls(**values)
        if config.task not in ("ner", "re"):
            raise InputError(f"task must be 'ner' or 're', not {config.task!r}")
        if config.crf and config.task != "ner":
            raise InputError("crf = true is for the entity model (task = 'ner') only")
        return config

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
