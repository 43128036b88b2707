"""The FastAPI application: endpoints over the Extractor, errors mapped to status codes in one place.

CPU-bound endpoints are plain `def`, so FastAPI runs them in its thread pool and the event loop stays free;
the probes are `async def`, so they need no worker thread and answer even while every thread is busy.
Limits on size, time and concurrency are app/limits.py; the API key and CORS, app/access.py.
"""

import io
import logging
import os
import uuid
import zipfile
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, FastAPI, File, Header, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app import access, faults, limits, observability, page
from app.errors import (
    BadEncoding,
    BundleError,
    ErrorAnswer,
    InferenceError,
    InputError,
    InternalError,
    RenersansError,
    Unauthorized,
    UnsupportedMediaType,
    error_answer,
)
from app.schemas import (
    BratDocument,
    BratEntity,
    EntityOut,
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    ModelInfo,
    RelationOut,
    RelationsRequest,
    RelationsResponse,
)
from app.service import Extractor, Result, validate_entities
from app.settings import Settings
from app.text.brat import Entity, format_ann, parse_ann

log = logging.getLogger("app")
VERSION = "0.1.0"
# A zip may expand to at most this many times the request limit, and hold at most this many files.
ZIP_EXPANSION = 20
ZIP_MAX_FILES = 1000
JSON_ENDPOINTS = {"/extract", "/relations"}


def decode_upload(data: bytes, filename: str) -> str:
    """UTF-8 text as sent (a BOM is kept as a character, so offsets match the file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEncoding(
            f"{filename}: not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "convert it, e.g. `iconv -f cp1251 -t utf-8`"
        ) from None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    observability.configure_logging(settings.log_level)
    state: dict = {"extractor": None, "reason": "starting"}
    gate = limits.Gate(settings.max_concurrency, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            extractor = Extractor(settings)
            extractor.warmup()
        except BundleError as exc:
            state["reason"] = str(exc)
            if not settings.wait_for_bundle:
                log.error("%s", exc)
                raise SystemExit(f"renersans: {exc}") from None
            log.error("not ready: %s", exc)
        else:
            if settings.require_gpu and not extractor.on_cuda:
                state["reason"] = f"a GPU is required but the models run on {extractor.providers}"
                log.error(state["reason"])
            else:
                state["reason"] = ""
            state["extractor"] = extractor
            observability.MODEL_INFO.info({k: str(v) for k, v in extractor.info().items()})
            log.info(
                "ready in %.2f s (load) + %.2f s (warm-up)", extractor.load_seconds, extractor.warmup_seconds
            )
        # Requests waiting for a model slot wait in worker threads: make room for all of them beside the
        # thread pool's usual 40, so that requests that need no model never wait for a thread.
        threads = anyio.to_thread.current_default_thread_limiter()
        threads.total_tokens = max(threads.total_tokens, 40 + settings.max_concurrency + settings.max_queue)
        yield
        # uvicorn gets here once its connections are done, or once its grace period (`--grace`) is over with
        # requests still running. Work on the models cannot be cancelled, and its threads would keep the
        # process alive past the grace period: end it now.
        if gate.running or gate.waiting:
            unfinished = gate.running + gate.waiting
            log.error("exiting with %d model request(s) unfinished after the grace period", unfinished)
            logging.shutdown()
            os._exit(1)
        if state["extractor"] is not None:
            state["extractor"].close()  # the cross-request batchers' worker threads, when configured

    app = FastAPI(
        title="RENERSANs",
        version=VERSION,
        description="Entities and relations from Russian business and government documents (RuREBus).",
        lifespan=lifespan,
        responses={
            status: {"model": ErrorResponse}
            for status in (400, 408, 413, 415, 422, 500, 503, 504, *((401,) if settings.api_key else ()))
        },
    )
    observability.IN_FLIGHT.set_function(lambda: gate.running)
    observability.QUEUED.set_function(lambda: gate.waiting)
    # Added innermost first: every answer is logged, and carries CORS headers even when a limit refused it.
    app.add_middleware(
        limits.Limits,
        max_bytes=settings.max_request_bytes,
        read_timeout_s=settings.read_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **access.cors_options(settings.cors_origins))
    app.add_middleware(observability.RequestLog)

    key_header = APIKeyHeader(
        name=access.HEADER, auto_error=False, description="the key configured in RENERSANS_API_KEY"
    )

    def require_key(key: Annotated[str | None, Security(key_header)]) -> None:
        if not access.key_matches(key, settings.api_key):
            raise Unauthorized(f"send the API key in the {access.HEADER} header")

    async def inject_fault(request: Request) -> None:
        # async, so it runs in the request's own context, which the endpoint's worker thread then copies.
        if value := request.headers.get(faults.HEADER):
            faults.inject(faults.parse(value))

    def extractor() -> Extractor:
        ex = state["extractor"]
        if ex is None or state["reason"]:
            raise BundleError(f"not ready: {state['reason']}")
        return ex

    Engine = Annotated[Extractor, Depends(extractor)]
    # The key guards every endpoint that reads documents; the probes, /metrics and /version stay open.
    guarded = [Depends(require_key)] if settings.api_key else []
    if settings.fault_injection:
        log.warning("fault injection is on (RENERSANS_FAULT_INJECTION): for tests only, never in production")
        guarded.append(Depends(inject_fault))

    @app.exception_handler(RenersansError)
    def _domain_error(request: Request, exc: RenersansError) -> Response:
        return _respond(exc.answer())

    @app.exception_handler(RequestValidationError)
    def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path in JSON_ENDPOINTS:
            try:
                _require_json(request)
            except UnsupportedMediaType as wrong_type:
                return _domain_error(request, wrong_type)
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _respond(error_answer(422, "ValidationError", detail))

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException) -> Response:
        # Routing's own errors (404, 405) in the same JSON shape as every other error.
        name = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
        detail = f"{exc.detail}: {request.method} {request.url.path}"
        if exc.status_code in (404, 405):
            detail += " (the endpoints and their methods are listed at /docs)"
        return _respond(error_answer(exc.status_code, name, detail, headers=exc.headers))

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> Response:
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error (error id %s)", error_id, exc_info=exc)
        return _respond(InternalError(f"internal error; error id {error_id}", error_id).answer())

    def run(ex: Extractor, endpoint: str, call):
        """Run one inference call, in one of the model slots (the concurrency limit); a failure inside the
        models is this request's 503, not the process's."""
        try:
            with gate.slot():
                result = call()
        except RenersansError:
            raise
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.exception("inference failed (error id %s)", error_id)
            raise InferenceError(f"inference failed; error id {error_id}", error_id) from exc
        observability.record(endpoint, result)
        return result

    def brat_requested(format_: str | None, accept: str | None) -> bool:
        return format_ == "brat" or (format_ is None and bool(accept) and accept.startswith("text/plain"))

    @app.post(
        "/extract",
        response_model=ExtractResponse,
        dependencies=guarded,
        responses={200: {"content": {"text/plain": {"example": "T1\tCMP 0 4\tРост\n"}}}},
    )
    def extract(
        body: ExtractRequest,
        ex: Engine,
        request: Request,
        format: Annotated[str | None, Query(pattern="^(json|brat)$")] = None,
        accept: Annotated[str | None, Header()] = None,
    ):
        """Entities (and relations) of raw text, as JSON or (`?format=brat` / `Accept: text/plain`) `.ann`."""
        _require_json(request)
        if settings.log_text:
            log.info("request text", extra={"text": body.text[:2000]})
        result = run(ex, "extract", lambda: ex.extract(body.text, body.relations))
        if brat_requested(format, accept):
            doc = result.document
            return PlainTextResponse(format_ann(doc.entities, doc.relations))
        return _extract_response(ex, result)

    @app.post("/extract/brat", dependencies=guarded, response_class=Response)
    def extract_brat(
        ex: Engine, file: Annotated[UploadFile, File(description="a brat .txt, or a .zip of them")]
    ):
        """Upload a `.txt` and get its `.ann`; upload a `.zip` of `.txt` files and get a `.zip` of `.ann`."""
        name = file.filename or "document.txt"
        data = file.file.read()
        if name.lower().endswith(".zip"):
            return _annotate_zip(ex, data, settings.max_request_bytes * ZIP_EXPANSION, run)
        if not name.lower().endswith(".txt"):
            raise UnsupportedMediaType(f"{name}: upload a brat .txt file or a .zip of .txt files")
        text = decode_upload(data, name)
        doc = run(ex, "extract_brat", lambda: ex.extract(text)).document
        stem = PurePosixPath(name).stem or "document"
        return Response(
            format_ann(doc.entities, doc.relations),
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{_safe(stem)}.ann"'},
        )

    @app.post("/relations", response_model=RelationsResponse, dependencies=guarded)
    def relations(body: RelationsRequest, ex: Engine, request: Request):
        """Track 2: the relations between entities you give (character offsets into `text`)."""
        _require_json(request)
        entities = [Entity(e.id, e.type, e.start, e.end, body.text[e.start : e.end]) for e in body.entities]
        validate_entities(body.text, entities)  # before waiting for a model slot
        result = run(ex, "relations", lambda: ex.relations_for(body.text, entities))
        return RelationsResponse(
            relations=[
                RelationOut(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2) for r in result.document.relations
            ],
            model=ModelInfo(**ex.info()),
            timings_ms=result.timings_ms,
        )

    @app.post("/relations/brat", dependencies=guarded, response_class=PlainTextResponse)
    def relations_brat(
        ex: Engine,
        txt: Annotated[UploadFile, File(description="the document .txt")],
        ann: Annotated[UploadFile, File(description="its .ann with the entities (T lines)")],
    ):
        """Track 2 for brat files: the `.ann` back with the relations between its entities added."""
        text = decode_upload(txt.file.read(), txt.filename or "document.txt")
        ann_name = ann.filename or "document.ann"
        given = parse_ann(decode_upload(ann.file.read(), ann_name), text, source=ann_name)
        validate_entities(text, given.entities)  # before waiting for a model slot
        result = run(ex, "relations", lambda: ex.relations_for(text, given.entities))
        return PlainTextResponse(format_ann(given.entities, result.document.relations))

    @app.post(
        "/brat/tagger",
        dependencies=guarded,
        openapi_extra={
            "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def brat_tagger(request: Request, ex: Engine):
        """brat's automatic annotation protocol: the document as the body, `{id: {type, offsets, texts}}`
        back (entities only: brat's protocol carries no relations)."""
        raw = await request.body()
        text = decode_upload(raw, "request body")
        result = await run_in_threadpool(
            lambda: run(ex, "brat_tagger", lambda: ex.extract(text, relations=False))
        )
        return {
            e.id: {"type": e.type, "offsets": [[e.start, e.end]], "texts": [e.text]}
            for e in result.document.entities
        }

    @app.post(
        "/brat/parse",
        response_model=BratDocument,
        dependencies=guarded,
        responses={400: {"model": ErrorResponse}},
    )
    def brat_parse(
        txt: Annotated[UploadFile, File(description="the document .txt (UTF-8)")],
        ann: Annotated[UploadFile | None, File(description="its .ann (none: no annotations)")] = None,
    ) -> BratDocument:
        """A brat pair read and checked (offsets, texts, relation arguments) by the service's own reader,
        as JSON; no model runs. The page at `/` shows existing annotations with it."""
        text = decode_upload(txt.file.read(), txt.filename or "document.txt")
        ann_name = (ann.filename if ann else None) or "document.ann"
        content = decode_upload(ann.file.read(), ann_name) if ann else ""
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
            relations=[RelationOut(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2) for r in doc.relations],
            warnings=dict(doc.warnings),
        )

    @app.get("/health")
    async def health() -> dict:
        """The process is alive (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """The bundle is loaded, warmed up, and on the execution provider configured."""
        ok = state["extractor"] is not None and not state["reason"]
        body = {"ready": ok, "reason": state["reason"] or None}
        if state["extractor"] is not None:
            body["model"] = state["extractor"].info()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format."""
        return observability.exposition()

    @app.get("/version")
    async def version() -> dict:
        ex = state["extractor"]
        return {"version": VERSION, "model": ex.info() if ex else None}

    page.add_page(app)
    _errors_as_json(app)
    return app


def _errors_as_json(app: FastAPI) -> None:
    """Error answers are JSON (schemas.ErrorResponse) on every route, also on those whose success is text or
    a zip: FastAPI documents a route's extra responses in the route's own media type, so move them."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[:1] in "45" and content and "application/json" not in content:
                        response["content"] = {"application/json": next(iter(content.values()))}
        return schema

    app.openapi = openapi


def _respond(answer: ErrorAnswer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "")
    if not kind.startswith("application/json"):
        raise UnsupportedMediaType(f"send JSON with Content-Type: application/json (got {kind or 'none'!r})")


def _safe(stem: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:200] or "document"


def _extract_response(ex: Extractor, result: Result) -> ExtractResponse:
    doc = result.document
    return ExtractResponse(
        entities=[
            EntityOut(id=e.id, type=e.type, start=e.start, end=e.end, text=e.text) for e in doc.entities
        ],
        relations=[RelationOut(id=r.id, type=r.type, arg1=r.arg1, arg2=r.arg2) for r in doc.relations],
        model=ModelInfo(**ex.info()),
        timings_ms=result.timings_ms,
    )


def _annotate_zip(ex: Extractor, data: bytes, max_bytes: int, run) -> Response:
    """A zip of .txt in, a zip of .ann out. Archives that cannot be read, that expand past `max_bytes`, hold
    paths that escape (absolute, `..`) or members compressed other than by deflate are refused before anything
    is decompressed; nothing is written to disk."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except Exception:  # zipfile raises a dozen exception types for malformed archives, not only BadZipFile
        raise InputError("the upload is not a readable .zip archive") from None
    if len(members) > ZIP_MAX_FILES:
        raise InputError(f"the zip holds {len(members)} files; at most {ZIP_MAX_FILES} per request")
    if sum(m.file_size for m in members) > max_bytes:
        raise InputError(f"the zip expands past {max_bytes:,} bytes; send smaller batches")
    for m in members:
        path = PurePosixPath(m.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
            raise InputError(f"{m.filename}: paths inside the zip must be relative, without '..'")
        # Deflate is what zip tools write; other methods (bzip2, lzma) can expand a small read far more.
        if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or m.flag_bits & 0x1:
            raise InputError(f"{m.filename}: only unencrypted members, stored or deflated, can be read")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as result:
        for m in members:
            path = PurePosixPath(m.filename)
            if path.suffix.lower() != ".txt":
                continue
            try:
                raw = archive.read(m)  # at most m.file_size bytes: zipfile stops there and checks the CRC
            except Exception as exc:  # corrupt data: BadZipFile, zlib.error, EOFError, ...
                raise InputError(f"{m.filename}: cannot be decompressed ({exc})") from None
            if len(raw) != m.file_size:
                raise InputError(f"{m.filename}: its size does not match the archive's record")
            text = decode_upload(raw, m.filename)
            doc = run(ex, "extract_brat", lambda text=text: ex.extract(text)).document
            result.writestr(str(path.with_suffix(".ann")), format_ann(doc.entities, doc.relations))
    return Response(
        out.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="annotations.zip"'},
    )


def app_factory() -> FastAPI:
    """For `uvicorn --factory app.main:app_factory`: settings from the environment."""
    return create_app(Settings())
