"""`renersans serve`: the HTTP service under uvicorn, with the guards `app/limits.py` puts in front of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import Commands


def register(sub: Commands) -> None:
    p = sub.add_parser("serve", help="start the HTTP service (uvicorn)")
    p.add_argument("--bundle", type=Path, help="model bundle (default: $RENERSANS_BUNDLE or models/default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes; each loads its own copy of the models")
    p.add_argument("--grace", type=int, default=30, help="seconds in-flight requests get on shutdown")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from app.limits import GuardedH11Protocol
    from app.settings import Settings

    if args.bundle:
        os.environ["RENERSANS_BUNDLE"] = str(args.bundle)
    settings = Settings()
    uvicorn.run(
        "app.main:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # h11 with a deadline for request heads (slow clients), whatever else is installed (httptools).
        http=GuardedH11Protocol,
        timeout_graceful_shutdown=args.grace,
        timeout_keep_alive=5,
        # Past it a request gets 503 Overloaded and its connection is closed (app/limits.py).
        limit_concurrency=settings.max_connections,
        log_level="warning",
    )
    return 0
