"""What a request may ask to keep of an answer: score bars and types. The models always run on the whole
text; the selection is applied to what they found, so a stricter selection can only remove annotations, and
the ids of what it keeps are those of the full answer.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, Field, field_validator

from app.text.brat import Document, Entity, Relation
from app.text.tags import ENTITY_TYPES, RELATION_TYPES


class Selection(BaseModel):
    min_entity_score: float = Field(
        0.0, ge=0.0, le=1.0, description="keep entities whose score is at least this (0: all)"
    )
    min_relation_score: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="keep relations whose score (which takes in their entities' scores) is at least this "
        "(0: all the bundle keeps; its decoding's own min_relation_score applies first)",
    )
    entity_types: list[str] | None = Field(
        None, description=f"keep only these entity types (of {', '.join(ENTITY_TYPES)}); none: all"
    )
    relation_types: list[str] | None = Field(
        None, description=f"keep only these relation types (of {', '.join(RELATION_TYPES)}); none: all"
    )

    @field_validator("min_entity_score", "min_relation_score", mode="before")
    @classmethod
    def _not_a_flag(cls, value: object) -> object:
        # JSON's true and false would pass as 1 and 0 (pydantic's lax numbers): a bar must be a number.
        if isinstance(value, bool):
            raise ValueError("send a number from 0 to 1, not true or false")
        return value

    @field_validator("entity_types")
    @classmethod
    def _known_entity_types(cls, value: list[str] | None) -> list[str] | None:
        return _known(value, ENTITY_TYPES, "entity")

    @field_validator("relation_types")
    @classmethod
    def _known_relation_types(cls, value: list[str] | None) -> list[str] | None:
        return _known(value, RELATION_TYPES, "relation")

    @property
    def selects(self) -> bool:
        """Whether anything would be removed from some answer."""
        return bool(self.min_entity_score or self.min_relation_score) or (
            self.entity_types is not None or self.relation_types is not None
        )


def _known(value: list[str] | None, known: tuple[str, ...], kind: str) -> list[str] | None:
    unknown = [t for t in value or () if t not in known]
    if unknown:
        raise ValueError(f"unknown {kind} type(s) {unknown}; the {kind} types are {list(known)}")
    return value


def select(doc: Document, selection: Selection) -> Document:
    """The annotations of `doc` that `selection` keeps; a relation only between entities that are kept.
    An annotation with no score (none computed) passes any bar."""
    if not selection.selects:
        return doc
    entities = [e for e in doc.entities if _keeps(e, selection.min_entity_score, selection.entity_types)]
    kept = {e.id for e in entities}
    relations = [
        r
        for r in doc.relations
        if r.arg1 in kept
        and r.arg2 in kept
        and _keeps(r, selection.min_relation_score, selection.relation_types)
    ]
    return replace(doc, entities=entities, relations=relations)


def _keeps(item: Entity | Relation, bar: float, types: list[str] | None) -> bool:
    return (types is None or item.type in types) and (item.score is None or item.score >= bar)
