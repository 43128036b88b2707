"""uvicorn's server with the drain (app/drain.py): SIGUSR1 starts it, the server stops itself once the
delay has passed, and a SIGTERM during the delay waits for its end (Kubernetes sends SIGTERM when the
preStop hook returns, or at once when the hook fails). A SIGTERM with no drain is today's graceful
shutdown, at once: `docker stop` and compose have no load balancer to wait for.

A graceful stop exits 0: uvicorn itself re-raises the signal it handled, and the process then ends as
killed by SIGTERM, which orchestrators record as an error.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from app import drain

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """`uvicorn.Server` that drains for `drain_delay_s` seconds on SIGUSR1; it writes `run_file` for
    `renersans drain` while it runs."""

    def __init__(self, config: uvicorn.Config, drain_delay_s: float, run_file: Path) -> None:
        super().__init__(config)
        self.drain_delay_s, self.run_file = drain_delay_s, run_file
        # Signal handlers only set these; the loop logs them (logging inside a handler can interleave).
        self.sigterm_deferred = False
        self._told: set[str] = set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        # The handler before the file: SIGUSR1's default action would kill the process.
        previous = signal.signal(signal.SIGUSR1, self.handle_drain)
        drain.write_run_file(self.run_file, self.drain_delay_s)
        try:
            with super().capture_signals():
                yield
        finally:
            drain.remove_run_file(self.run_file)
            signal.signal(signal.SIGUSR1, previous)

    def handle_drain(self, sig: int, frame: FrameType | None) -> None:
        drain.STATE.start(self.drain_delay_s)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it records the signal to re-raise at exit (see the module's docstring).
        if sig == signal.SIGTERM and drain.STATE.draining and not drain.STATE.over():
            self.sigterm_deferred = True
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop waiting for requests
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        state = drain.STATE
        if state.draining and "draining" not in self._told:
            self._told.add("draining")
            log.info("draining: /ready answers 503; stopping in %g s", state.delay_s)
        if self.sigterm_deferred and "deferred" not in self._told:
            self._told.add("deferred")
            log.info("SIGTERM while draining: the graceful shutdown waits for the drain's end")
        if state.over() and "over" not in self._told:
            self._told.add("over")
            log.info("drained for %g s: graceful shutdown", state.delay_s)
            self.should_exit = True
        return await super().on_tick(counter)
