"""The FastAPI application: its state, its lifespan (the models load there), its middleware, its error
handlers and its routers.

The endpoints are app/routes/, one router per concern, over the dependencies of app/deps.py; errors are
answered by app/handlers.py. Limits on size, time and concurrency are app/limits.py; the API key and CORS,
app/access.py.
"""

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import access, deps, drain, limits, observability, page, routes
from app.docs_ui import add_docs
from app.errors import BundleError
from app.handlers import add_error_handlers
from app.routes.probes import VERSION
from app.schemas import ErrorResponse
from app.service import Extractor
from app.settings import Settings

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service configured by `settings` (the environment's when none); its models load in `lifespan`."""
    settings = settings or Settings()
    observability.configure_logging(settings.log_level)
    app = FastAPI(
        title="RENERSANs",
        version=VERSION,
        description="Entities and relations from Russian business and government documents (RuREBus).",
        lifespan=lifespan,
        docs_url=None,  # served offline by app/docs_ui.py instead of from a CDN
        redoc_url=None,
        responses={
            status: {"model": ErrorResponse}
            for status in (400, 408, 413, 415, 422, 500, 503, 504, *((401,) if settings.api_key else ()))
        },
    )
    app.state.settings = settings
    app.state.extractor = None
    app.state.not_ready = "starting"
    app.state.gate = gate = limits.Gate(
        settings.max_concurrency, settings.max_queue, most_wait_s=settings.request_timeout_s
    )
    observability.IN_FLIGHT.set_function(lambda: gate.running)
    observability.QUEUED.set_function(lambda: gate.waiting)

    guards = deps.guards(settings)
    for router in routes.GUARDED:
        app.include_router(router, dependencies=guards)
    for router in routes.OPEN:
        app.include_router(router)
    page.add_page(app)
    add_docs(app)
    add_error_handlers(app)

    # Added innermost first: every answer is logged, and carries CORS headers even when a limit refused it.
    app.add_middleware(
        limits.Limits,
        max_bytes=settings.max_request_bytes,
        read_timeout_s=settings.read_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **access.cors_options(settings.cors_origins))
    app.add_middleware(observability.RequestLog, endpoints=[r.path for r in routes.api_routes()])
    app.add_middleware(drain.CloseWhileDraining)  # outermost: every answer, refusals included
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings, state = app.state.settings, app.state
    _load(app)
    # Requests waiting for a model slot wait in worker threads: make room for all of them beside the
    # thread pool's usual 40, so that requests that need no model never wait for a thread.
    threads = anyio.to_thread.current_default_thread_limiter()
    threads.total_tokens = max(threads.total_tokens, 40 + settings.max_concurrency + settings.max_queue)
    yield
    # uvicorn gets here once its connections are done, or once its grace period (`--grace`) is over with
    # requests still running. Work on the models cannot be cancelled, and its threads would keep the
    # process alive past the grace period: end it now.
    if state.gate.running or state.gate.waiting:
        unfinished = state.gate.running + state.gate.waiting
        log.error("exiting with %d model request(s) unfinished after the grace period", unfinished)
        logging.shutdown()
        os._exit(1)
    if state.extractor is not None:
        state.extractor.close()  # the cross-request batchers' worker threads, when configured


def _load(app: FastAPI) -> None:
    """The bundle loaded and warmed up onto app.state, or the reason it is not ready (the process exits on
    a bundle that cannot be used, unless told to wait for one)."""
    settings, state = app.state.settings, app.state
    try:
        extractor = Extractor(settings)
        extractor.warmup()
    except BundleError as exc:
        state.not_ready = str(exc)
        if not settings.wait_for_bundle:
            log.error("%s", exc)
            raise SystemExit(f"renersans: {exc}") from None
        log.error("not ready: %s", exc)
        return
    if settings.require_gpu and not extractor.on_cuda:
        state.not_ready = f"a GPU is required but the models run on {extractor.providers}"
        log.error(state.not_ready)
    else:
        state.not_ready = ""
    state.extractor = extractor
    observability.MODEL_INFO.info({k: str(v) for k, v in extractor.info().items()})
    log.info("ready in %.2f s (load) + %.2f s (warm-up)", extractor.load_seconds, extractor.warmup_seconds)


def app_factory() -> FastAPI:
    """For `uvicorn --factory app.main:app_factory`: settings from the environment."""
    return create_app(Settings())
