"""Entities (and relations) of raw text, as JSON or brat; and of brat `.txt` files, or a zip of them."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from app.deps import Engine, JsonBody, run
from app.errors import UnsupportedMediaType
from app.schemas import EntityOut, ExtractRequest, ExtractResponse, ModelInfo, RelationOut
from app.text.brat import Document, format_ann
from app.uploads import ZIP_EXPANSION, annotate_zip, decode_upload, safe_stem

log = logging.getLogger("app")
router = APIRouter()


@router.post(
    "/extract",
    response_model=ExtractResponse,
    responses={200: {"content": {"text/plain": {"example": "T1\tCMP 0 4\tРост\n"}}}},
)
def extract(
    body: ExtractRequest,
    ex: Engine,
    _json: JsonBody,
    request: Request,
    format: Annotated[str | None, Query(pattern="^(json|brat)$")] = None,
    accept: Annotated[str | None, Header()] = None,
):
    """Entities (and relations) of raw text, as JSON or (`?format=brat` / `Accept: text/plain`) `.ann`."""
    if request.app.state.settings.log_text:
        log.info("request text", extra={"text": body.text[:2000]})
    result = run(request, "extract", lambda: ex.extract(body.text, body.relations))
    doc = result.document
    if format == "brat" or (format is None and bool(accept) and accept.startswith("text/plain")):
        return PlainTextResponse(format_ann(doc.entities, doc.relations))
    return ExtractResponse(
        entities=[
            EntityOut(id=e.id, type=e.type, start=e.start, end=e.end, text=e.text) for e in doc.entities
        ],
        relations=[RelationOut(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2) for r in doc.relations],
        model=ModelInfo(**ex.info()),
        timings_ms=result.timings_ms,
    )


@router.post("/extract/brat", response_class=Response)
def extract_brat(
    request: Request,
    ex: Engine,
    file: Annotated[
        UploadFile, File(description="a brat .txt, or a .zip of them", examples=["Рост доходов"])
    ],
):
    """Upload a `.txt` and get its `.ann`; upload a `.zip` of `.txt` files and get a `.zip` of `.ann`."""
    name = file.filename or "document.txt"
    data = file.file.read()

    def annotate(text: str) -> Document:
        return run(request, "extract_brat", lambda: ex.extract(text)).document

    if name.lower().endswith(".zip"):
        max_bytes = request.app.state.settings.max_request_bytes * ZIP_EXPANSION
        return Response(
            annotate_zip(data, max_bytes, annotate),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="annotations.zip"'},
        )
    if not name.lower().endswith(".txt"):
        raise UnsupportedMediaType(f"{name}: upload a brat .txt file or a .zip of .txt files")
    doc = annotate(decode_upload(data, name))
    stem = PurePosixPath(name).stem or "document"
    return Response(
        format_ann(doc.entities, doc.relations),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{safe_stem(stem)}.ann"'},
    )
