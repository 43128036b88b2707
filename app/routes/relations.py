"""Track 2: the relations between entities the client gives, as JSON or as a brat pair."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import PlainTextResponse

from app.deps import Engine, JsonBody, run
from app.schemas import ModelInfo, RelationOut, RelationsRequest, RelationsResponse
from app.service import validate_entities
from app.text.brat import Entity, decode_text, format_ann, parse_ann

router = APIRouter()


@router.post("/relations", response_model=RelationsResponse)
def relations(body: RelationsRequest, ex: Engine, _json: JsonBody, request: Request):
    """Track 2: the relations between entities you give (character offsets into `text`)."""
    entities = [Entity(e.id, e.type, e.start, e.end, body.text[e.start : e.end]) for e in body.entities]
    validate_entities(body.text, entities)  # before waiting for a model slot
    result = run(request, "relations", lambda: ex.relations_for(body.text, entities))
    return RelationsResponse(
        relations=[RelationOut.of(r) for r in result.document.relations],
        model=ModelInfo(**ex.info()),
        timings_ms=result.timings_ms,
    )


@router.post("/relations/brat", response_class=PlainTextResponse)
def relations_brat(
    request: Request,
    ex: Engine,
    txt: Annotated[UploadFile, File(description="the document .txt", examples=["Рост доходов"])],
    ann: Annotated[
        UploadFile,
        File(description="its .ann with the entities (T lines)", examples=["T1\tCMP 0 4\tРост\n"]),
    ],
):
    """Track 2 for brat files: the `.ann` back with the relations between its entities added."""
    text = decode_text(txt.file.read(), txt.filename or "document.txt")
    ann_name = ann.filename or "document.ann"
    given = parse_ann(decode_text(ann.file.read(), ann_name), text, source=ann_name)
    validate_entities(text, given.entities)  # before waiting for a model slot
    result = run(request, "relations", lambda: ex.relations_for(text, given.entities))
    return PlainTextResponse(format_ann(given.entities, result.document.relations))
