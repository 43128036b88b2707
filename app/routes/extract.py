"""Entities (and relations) of raw text, as JSON or brat; and of brat `.txt` files, or a zip of them."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response

from app.deps import Engine, JsonBody, run
from app.errors import InferenceError, InputError, PayloadTooLarge, RenersansError, UnsupportedMediaType
from app.schemas import (
    EntityOut,
    ErrorResponse,
    ExtractBatchRequest,
    ExtractBatchResponse,
    ExtractRequest,
    ExtractResponse,
    ModelInfo,
    RelationOut,
)
from app.selection import Selection, select
from app.service import Extractor, Result
from app.text.brat import Document, decode_text, format_ann, score_notes
from app.uploads import ZIP_EXPANSION, annotate_zip, safe_stem

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
    scores: Annotated[bool, Query(description="brat only: each score as an AnnotatorNotes line")] = False,
):
    """Entities (and relations) of raw text, as JSON or (`?format=brat` / `Accept: text/plain`) `.ann`.
    The score bars and types in the body keep part of the answer (the models still read the whole text)."""
    if request.app.state.settings.log_text:
        log.info("request text", extra={"text": body.text[:2000]})
    result = run(request, "extract", lambda: ex.extract(body.text, body.relations))
    result = _selected(result, body)
    if format == "brat" or (format is None and bool(accept) and accept.startswith("text/plain")):
        return PlainTextResponse(_ann(result.document, scores))
    return extract_response(ex, result)


@router.post("/extract/batch", response_model=ExtractBatchResponse)
def extract_batch(body: ExtractBatchRequest, ex: Engine, _json: JsonBody, request: Request):
    """Many texts in one call, their sentences in one model batch: `results[i]` is what /extract answers for
    `texts[i]` with the same options, or the error that item alone met (the others are still answered)."""
    settings = request.app.state.settings
    if len(body.texts) > settings.max_batch_texts:
        raise PayloadTooLarge(
            f"{len(body.texts)} texts; at most {settings.max_batch_texts} per batch "
            "(RENERSANS_MAX_BATCH_TEXTS): send smaller batches"
        )
    size = sum(len(t) for t in body.texts if isinstance(t, str))
    if size > settings.max_batch_chars:
        raise PayloadTooLarge(
            f"{size:,} characters in all; at most {settings.max_batch_chars:,} per batch "
            "(RENERSANS_MAX_BATCH_CHARS): send smaller batches"
        )
    texts = {i: t for i, t in enumerate(body.texts) if isinstance(t, str)}
    answers: dict[int, Result | RenersansError] = {
        i: InputError(f"texts[{i}]: send a string, not {_kind(t)}")
        for i, t in enumerate(body.texts)
        if i not in texts
    }
    try:
        batch = run(request, "extract_batch", lambda: ex.extract_many(list(texts.values()), body.relations))
        answers.update(zip(texts, batch, strict=True))
    except InferenceError:
        # One text may have failed the shared pass: each alone, so that only what fails alone is an error.
        for i, text in texts.items():
            try:
                answers[i] = run(request, "extract_batch", lambda text=text: ex.extract(text, body.relations))
            except RenersansError as exc:
                answers[i] = exc
    results = [answers[i] for i in range(len(body.texts))]
    return ExtractBatchResponse(
        results=[
            _error(r) if isinstance(r, RenersansError) else extract_response(ex, _selected(r, body))
            for r in results
        ]
    )


@router.post("/extract/brat", response_class=Response)
def extract_brat(
    request: Request,
    ex: Engine,
    file: Annotated[
        UploadFile, File(description="a brat .txt, or a .zip of them", examples=["Рост доходов"])
    ],
    selection: Annotated[Selection, Query()],
    scores: Annotated[bool, Query(description="each score as an AnnotatorNotes line")] = False,
):
    """Upload a `.txt` and get its `.ann`; upload a `.zip` of `.txt` files and get a `.zip` of `.ann`.
    Score bars and types as query parameters (`?min_entity_score=0.5&entity_types=MET&entity_types=ECO`)."""
    name = file.filename or "document.txt"
    data = file.file.read()

    def annotate(text: str) -> str:
        return _ann(
            select(run(request, "extract_brat", lambda: ex.extract(text)).document, selection), scores
        )

    if name.lower().endswith(".zip"):
        max_bytes = request.app.state.settings.max_request_bytes * ZIP_EXPANSION
        return Response(
            annotate_zip(data, max_bytes, annotate),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="annotations.zip"'},
        )
    if not name.lower().endswith(".txt"):
        raise UnsupportedMediaType(f"{name}: upload a brat .txt file or a .zip of .txt files")
    ann = annotate(decode_text(data, name))
    stem = PurePosixPath(name).stem or "document"
    return Response(
        ann,
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{safe_stem(stem)}.ann"'},
    )


def extract_response(ex: Extractor, result: Result) -> ExtractResponse:
    doc = result.document
    return ExtractResponse(
        entities=[EntityOut.of(e) for e in doc.entities],
        relations=[RelationOut.of(r) for r in doc.relations],
        model=ModelInfo(**ex.info()),
        timings_ms=result.timings_ms,
    )


def _selected(result: Result, selection: Selection) -> Result:
    return Result(select(result.document, selection), result.timings_ms)


def _ann(doc: Document, scores: bool) -> str:
    notes = score_notes(doc.entities, doc.relations) if scores else ()
    return format_ann(doc.entities, doc.relations, notes)


def _error(exc: RenersansError) -> ErrorResponse:
    return ErrorResponse(error=type(exc).__name__, detail=str(exc), error_id=exc.error_id)


def _kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array"}.get(
        type(value), "an object"
    )
