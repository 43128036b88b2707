"""Request and response bodies at the HTTP boundary (pydantic v2, with examples for /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.selection import Selection
from app.text.brat import Entity, Relation

EXAMPLE_TEXT = "Рост доходов населения в 2019 году обеспечен за счёт повышения заработной платы."


class ExtractRequest(Selection):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": EXAMPLE_TEXT}]})

    text: str = Field(description="raw text; offsets in the answer are character offsets into it as sent")
    relations: bool = Field(True, description="also extract relations (the slower second stage)")


class ExtractBatchRequest(Selection):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"texts": [EXAMPLE_TEXT, "Рост доходов населения"]}]}
    )

    # Any JSON value is taken per item, so that one item that is not a string gets its own error in its slot
    # instead of failing the whole batch.
    texts: list[Any] = Field(description="the texts, answered in this order; each as `text` in /extract")
    relations: bool = Field(True, description="also extract relations (the slower second stage)")


class EntityOut(BaseModel):
    id: str = Field(examples=["T1"])
    type: str = Field(examples=["CMP"])
    start: int = Field(ge=0, description="first character, counted in Unicode code points")
    end: int = Field(ge=0, description="one past the last character")
    text: str = Field(description="exactly text[start:end]")
    score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the model's confidence: the mean probability of the tags that make the entity "
        "(B-TYPE on its first word, I-TYPE on the others); null where no model scored it",
    )

    @classmethod
    def of(cls, e: Entity) -> EntityOut:
        return cls(id=e.id, type=e.type, start=e.start, end=e.end, text=e.text, score=e.score)


class RelationOut(BaseModel):
    id: str = Field(examples=["R1"])
    type: str = Field(examples=["NPS"])
    arg1: str = Field(examples=["T2"])
    arg2: str = Field(examples=["T1"])
    score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the chance that the relation is right as found: the probability of the pair decision "
        "that made it (both entities' marked copies averaged) times its two entities' scores (an entity "
        "given in the request counts as certain); null where no model scored it",
    )

    @classmethod
    def of(cls, r: Relation) -> RelationOut:
        return cls(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2, score=r.score)


class ModelInfo(BaseModel):
    bundle: str
    created: str | None = None
    variants: dict[str, str]
    providers: dict[str, str]
    encoder: str | None = None
    relations: bool
    size_bytes: int
    # The decoding the bundle's dev figures were measured with (its manifest), which this service uses.
    decoding: dict[str, str | bool | int | float] = {}


class ExtractResponse(BaseModel):
    entities: list[EntityOut]
    relations: list[RelationOut]
    model: ModelInfo
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str = Field(description="the error's kind")
    detail: str = Field(description="what was wrong and what to send instead")
    error_id: str | None = Field(None, description="quote this when reporting a server-side failure")


class ExtractBatchResponse(BaseModel):
    results: list[ExtractResponse | ErrorResponse] = Field(
        description="one per text, in order: what /extract answers for it, or the error that item alone met"
    )


class GivenEntity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^T\d+$", examples=["T1"])
    type: str = Field(examples=["CMP"])
    start: int
    end: int


class RelationsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "Рост доходов населения",
                    "entities": [
                        {"id": "T1", "type": "CMP", "start": 0, "end": 4},
                        {"id": "T2", "type": "MET", "start": 5, "end": 22},
                    ],
                }
            ]
        },
    )

    text: str
    entities: list[GivenEntity]


class RelationsResponse(BaseModel):
    relations: list[RelationOut]
    model: ModelInfo
    timings_ms: dict[str, float]


class BratEntity(BaseModel):
    id: str = Field(examples=["T1"])
    type: str = Field(examples=["CMP"])
    start: int = Field(ge=0, description="first character of the first fragment")
    end: int = Field(ge=0, description="one past the last character of the last fragment")
    text: str = Field(description="the text at its fragments, joined by a space (brat's convention)")
    fragments: list[tuple[int, int]] = Field(description="(start, end) of each piece; one for most entities")


class BratDocument(BaseModel):
    text: str = Field(description="the .txt as decoded (UTF-8, a BOM kept): the offsets index this string")
    entities: list[BratEntity]
    relations: list[RelationOut]
    warnings: dict[str, int] = Field(
        description="what was read but is not drawn (A, N, # lines...) or is unusual, with counts"
    )
