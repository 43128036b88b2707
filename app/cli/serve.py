"""`renersans serve`: the HTTP service under uvicorn, with the guards `app/limits.py` puts in front of it;
`renersans drain`: the first step of its stop sequence (app/drain.py), for a Kubernetes preStop hook."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import Commands

RUN_FILE_HELP = (
    "where the server's process id is kept for `renersans drain` (default: $TMPDIR/renersans-PORT.json)"
)
PORT = 8000  # the images' (docker/Dockerfile.*), so that the preStop hook needs no options


def register(sub: Commands) -> None:
    p = sub.add_parser("serve", help="start the HTTP service (uvicorn)")
    p.add_argument("--bundle", type=Path, help="model bundle (default: $RENERSANS_BUNDLE or models/default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--workers", type=int, default=1, help="processes; each loads its own copy of the models")
    p.add_argument("--grace", type=int, default=30, help="seconds in-flight requests get on shutdown")
    p.add_argument("--run-file", type=Path, help=RUN_FILE_HELP)
    p.set_defaults(func=serve)

    p = sub.add_parser(
        "drain",
        help="make the local server drain: /ready 503 while still serving, then stop (a preStop hook)",
        description="Tell the `renersans serve` on this machine to drain: /ready answers 503 while every "
        "request is still served, and RENERSANS_DRAIN_DELAY_S seconds later (the server's setting) its "
        "graceful shutdown runs. Waits for the delay, so that Kubernetes sends SIGTERM only after it.",
    )
    p.add_argument("--port", type=int, default=PORT, help="the server's port (default: %(default)s)")
    p.add_argument("--run-file", type=Path, help=RUN_FILE_HELP)
    p.add_argument("--no-wait", action="store_true", help="return at once instead of after the delay")
    p.set_defaults(func=drain)


def serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from app.drain import run_file_path
    from app.limits import GuardedH11Protocol
    from app.server import DrainingServer
    from app.settings import Settings

    if args.bundle:
        os.environ["RENERSANS_BUNDLE"] = str(args.bundle)
    settings = Settings()
    options = dict(
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
    if args.workers > 1:
        # uvicorn's supervisor would not pass the drain's signal on to its workers: no drain here.
        uvicorn.run("app.main:app_factory", factory=True, **options)
        return 0
    server = DrainingServer(
        uvicorn.Config("app.main:app_factory", factory=True, **options),
        drain_delay_s=settings.drain_delay_s,
        run_file=args.run_file or run_file_path(args.port),
    )
    server.run()
    return 0 if server.started else 3  # 3: uvicorn's status for a server that never started


def drain(args: argparse.Namespace) -> int:
    import time

    from app.drain import run_file_path, running, signal_drain

    path = args.run_file or run_file_path(args.port)
    started = time.monotonic()
    run = signal_drain(path)
    print(f"renersans: draining the server (pid {run.pid}); it stops accepting in {run.drain_delay_s:g} s")
    if args.no_wait:
        return 0
    # Until the delay is over (or the server gone): Kubernetes sends SIGTERM once the hook returns.
    while time.monotonic() - started < run.drain_delay_s and running(run.pid):
        time.sleep(0.1)
    return 0
