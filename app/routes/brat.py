"""For brat itself and for the page: brat's automatic annotation protocol, and a brat pair read as JSON."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app.deps import Engine, run
from app.schemas import BratDocument, BratEntity, ErrorResponse, RelationOut
from app.text.brat import decode_text, parse_ann

router = APIRouter()


@router.post(
    "/brat/tagger",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/plain": {"schema": {"type": "string", "examples": ["Рост доходов"]}}},
        }
    },
)
async def brat_tagger(request: Request, ex: Engine):
    """brat's automatic annotation protocol: the document as the body, `{id: {type, offsets, texts}}`
    back (entities only: brat's protocol carries no relations)."""
    raw = await request.body()
    text = decode_text(raw, "request body")
    result = await run_in_threadpool(
        lambda: run(request, "brat_tagger", lambda: ex.extract(text, relations=False))
    )
    return {
        e.id: {"type": e.type, "offsets": [[e.start, e.end]], "texts": [e.text]}
        for e in result.document.entities
    }


@router.post("/brat/parse", response_model=BratDocument, responses={400: {"model": ErrorResponse}})
def brat_parse(
    txt: Annotated[UploadFile, File(description="the document .txt (UTF-8)")],
    ann: Annotated[UploadFile | None, File(description="its .ann (none: no annotations)")] = None,
) -> BratDocument:
    """A brat pair read and checked (offsets, texts, relation arguments) by the service's own reader,
    as JSON; no model runs. The page at `/` shows existing annotations with it."""
    text = decode_text(txt.file.read(), txt.filename or "document.txt")
    ann_name = (ann.filename if ann else None) or "document.ann"
    content = decode_text(ann.file.read(), ann_name) if ann else ""
    doc = parse_ann(content, text, source=ann_name)
    return BratDocument(
        text=text,
        entities=[
            BratEntity(
                id=e.id,
                type=e.type,
                start=e.start,
                end=e.end,
                text=e.text,
                fragments=list(e.fragments or ((e.start, e.end),)),
            )
            for e in doc.entities
        ],
        relations=[RelationOut.of(r) for r in doc.relations],
        warnings=dict(doc.warnings),
    )
