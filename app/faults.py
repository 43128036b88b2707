"""Fault injection, for the tests only: one request's inference fails for real, or takes longer.

Off unless `RENERSANS_FAULT_INJECTION=true`, which no deployment sets. Then the model endpoints obey the
request header `X-Renersans-Fault`:

- `error`: the request's token ids are replaced by ids past the vocabulary before they reach ONNX Runtime,
  whose embedding kernel refuses them ("input index out of range"). That is a genuine runtime error raised
  by `session.run` in that request's worker thread, through the same code path as any other model failure,
  so the tests see what a client would see when a model fails on one document, and that the other requests
  running at the same time are untouched. No crafted text can do this (the tokenizer only makes ids it has),
  which is why it takes a switch.
- `delay=S`: the request's worker thread sleeps S seconds before its first model call: a slow request on
  demand, to test the request timeout, the concurrency limit and graceful shutdown without depending on how
  fast this machine happens to be.
- `crash`: the request raises a plain exception before any model runs, a stand-in for a bug of ours, to show
  that even then the answer is the service's JSON error (500) with an error id that the log also has.

The fault travels in a context variable: FastAPI copies the request's context into the worker thread that
runs the endpoint, so a fault set for one request can reach no other. With cross-request batching
(app/batching.py) the batcher applies it in the request's thread, before its rows join a shared batch.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from app.errors import InputError

HEADER = "X-Renersans-Fault"


@dataclass
class Fault:
    error: bool = False
    delay_s: float = 0.0
    crash: bool = False


_CURRENT: ContextVar[Fault | None] = ContextVar("renersans_fault", default=None)


def parse(value: str) -> Fault:
    """`error`, `delay=S` or `crash`, or several separated by commas."""
    fault = Fault()
    for part in (p.strip() for p in value.split(",")):
        name, _, arg = part.partition("=")
        try:
            if name in ("error", "crash") and not arg:
                setattr(fault, name, True)
            elif name == "delay":
                fault.delay_s = float(arg)
                if not 0 <= fault.delay_s <= 600:
                    raise ValueError(arg)
            else:
                raise ValueError(part)
        except ValueError:
            expected = "`error`, `crash` or `delay=SECONDS` (0 to 600)"
            raise InputError(f"{HEADER}: {part!r} is not {expected}") from None
    return fault


def inject(fault: Fault) -> None:
    """Set the fault for the current request (its context); a `crash` raises here and now."""
    if fault.crash:
        raise RuntimeError(f"crash injected by the {HEADER} header")
    _CURRENT.set(fault)


def before_model(ids: np.ndarray) -> np.ndarray:
    """Called with each batch of token ids on its way to ONNX Runtime; returns them unchanged unless a fault
    was injected for this request."""
    fault = _CURRENT.get()
    if fault is None:
        return ids
    if fault.delay_s:
        delay, fault.delay_s = fault.delay_s, 0.0  # once per request, not once per batch
        time.sleep(delay)
    if fault.error:
        return np.full_like(ids, np.iinfo(ids.dtype).max)
    return ids
