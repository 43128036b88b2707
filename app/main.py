"""The FastAPI application: endpoints over the Extractor, errors mapped to status codes in one place.

CPU-bound endpoints are plain `def`, so FastAPI runs them in its thread pool and the event loop stays free
for /health and /ready.
"""

import io
import logging
import uuid
import zipfile
from contextlib import asynccontextmanager
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from app import observability
from app.errors import (
    BadEncoding,
    BundleError,
    InferenceError,
    InputError,
    RenersansError,
    UnsupportedMediaType,
)
from app.schemas import (
    EntityOut,
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    ModelInfo,
    RelationOut,
    RelationsRequest,
    RelationsResponse,
)
from app.service import Extractor, Result
from app.settings import Settings
from app.text.brat import Entity, format_ann, parse_ann

log = logging.getLogger("app")
VERSION = "0.1.0"
ERRORS = {404: "not found", 405: "method not allowed"}
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
        yield

    app = FastAPI(
        title="RENERSANs",
        version=VERSION,
        description="Entities and relations from Russian business and government documents (RuREBus).",
        lifespan=lifespan,
        responses={
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"])
    app.add_middleware(observability.BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(observability.RequestLog)

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if settings.api_key and x_api_key != settings.api_key:
            raise _Unauthorized()

    def extractor() -> Extractor:
        ex = state["extractor"]
        if ex is None or state["reason"]:
            raise BundleError(f"not ready: {state['reason']}")
        return ex

    Engine = Annotated[Extractor, Depends(extractor)]
    guarded = [Depends(require_key)]

    @app.exception_handler(RenersansError)
    def _domain_error(request: Request, exc: RenersansError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc), "error_id": getattr(exc, "error_id", None)},
            status_code=exc.status,
        )

    @app.exception_handler(RequestValidationError)
    def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path in JSON_ENDPOINTS:
            try:
                _require_json(request)
            except UnsupportedMediaType as wrong_type:
                return _domain_error(request, wrong_type)
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "ValidationError", "detail": detail}, status_code=422)

    @app.exception_handler(_Unauthorized)
    def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": "Unauthorized", "detail": "send the API key in the X-API-Key header"}, status_code=401
        )

    def run(ex: Extractor, endpoint: str, call):
        """Run one inference call; a failure inside the models is this request's 503, not the process's."""
        try:
            result = call()
        except RenersansError:
            raise
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.exception("inference failed (error id %s)", error_id)
            err = InferenceError(f"inference failed; error id {error_id}")
            err.error_id = error_id
            raise err from exc
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
        result = run(ex, "relations", lambda: ex.relations_for(text, given.entities))
        return PlainTextResponse(format_ann(given.entities, result.document.relations))

    @app.post("/brat/tagger", dependencies=guarded)
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

    @app.get("/health")
    def health() -> dict:
        """The process is alive (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """The bundle is loaded, warmed up, and on the execution provider configured."""
        ok = state["extractor"] is not None and not state["reason"]
        body = {"ready": ok, "reason": state["reason"] or None}
        if state["extractor"] is not None:
            body["model"] = state["extractor"].info()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text format."""
        return observability.exposition()

    @app.get("/version")
    def version() -> dict:
        ex = state["extractor"]
        return {"version": VERSION, "model": ex.info() if ex else None}

    return app


class _Unauthorized(Exception):
    pass


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
    """A zip of .txt in, a zip of .ann out. Paths that escape (absolute, `..`) and archives that expand
    past `max_bytes` are refused before anything is decompressed; nothing is written to disk."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except zipfile.BadZipFile:
        raise InputError("the upload is not a readable .zip archive") from None
    if len(members) > ZIP_MAX_FILES:
        raise InputError(f"the zip holds {len(members)} files; at most {ZIP_MAX_FILES} per request")
    if sum(m.file_size for m in members) > max_bytes:
        raise InputError(f"the zip expands past {max_bytes:,} bytes; send smaller batches")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as result:
        for m in members:
            path = PurePosixPath(m.filename)
            if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
                raise InputError(f"{m.filename}: paths inside the zip must be relative, without '..'")
            if path.suffix.lower() != ".txt":
                continue
            raw = archive.read(m)
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
