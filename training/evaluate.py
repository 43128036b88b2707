"""The three evaluations, each with the official metric on brat documents rebuilt by the shared pipeline:
NER (track 1), relations given gold entities (track 2) and end-to-end relations (track 3)."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from app.metric import Report, evaluate
from app.pipeline import Pipeline
from app.text.brat import Document


def evaluate_ner(pipeline: Pipeline, gold: Sequence[Document], progress: bool = True) -> Report:
    pred = {
        d.name: pipeline.extract(d.name, d.text, relations=False)
        for d in tqdm(gold, desc="dev NER", unit="doc", disable=not progress, leave=False)
    }
    return evaluate(gold, pred, "ner")


def evaluate_relations_given_entities(
    pipeline: Pipeline, gold: Sequence[Document], progress: bool = True
) -> Report:
    pred = {
        d.name: pipeline.relations_for(d.name, d.text, d.entities)
        for d in tqdm(
            gold, desc="dev relations (gold entities)", unit="doc", disable=not progress, leave=False
        )
    }
    return evaluate(gold, pred, "re")


def evaluate_end_to_end(pipeline: Pipeline, gold: Sequence[Document], progress: bool = True) -> Report:
    pred = {
        d.name: pipeline.extract(d.name, d.text)
        for d in tqdm(gold, desc="dev end-to-end", unit="doc", disable=not progress, leave=False)
    }
    return evaluate(gold, pred, "re")
