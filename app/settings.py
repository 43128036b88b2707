"""Service configuration: environment variables `RENERSANS_*` (or a `.env` file), validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.bundle import default_bundle
from app.derive import default_cache_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENERSANS_", env_file=".env", extra="ignore")

    bundle: Path = Field(default_factory=default_bundle, description="model bundle directory")
    variant: str = Field(
        "auto", description="bundle variant (fp32, optimized, int8, fp16: shipped or derived) or auto"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="where variants derived on this host are kept (the CPU's int8, made from fp16 once)",
    )
    require_gpu: bool = Field(False, description="not ready unless the models really run on CUDA")
    wait_for_bundle: bool = Field(
        False,
        description="on a missing or broken bundle, serve /health with /ready false instead of exiting",
    )
    max_request_bytes: int = Field(2_000_000, gt=0, description="largest request body accepted (413 above)")
    read_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client has to send a request's head, then its body (408 after)"
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="seconds from a request's arrival to its answer, queueing included (504)"
    )
    max_batch_texts: int = Field(64, gt=0, description="texts in one POST /extract/batch (413 above)")
    max_batch_chars: int = Field(
        500_000, gt=0, description="characters of all texts in one POST /extract/batch (413 above)"
    )
    max_concurrency: int = Field(4, gt=0, description="model requests run at once")
    max_queue: int = Field(32, ge=0, description="model requests waiting for a slot; more get 503 Overloaded")
    # Each connection holds a file descriptor and some memory; past this the process would run out of them
    # (1,024 descriptors is a common limit) long before the models could serve the requests.
    max_connections: int = Field(
        500, gt=1, description="open connections (idle keep-alive ones included); beyond, 503 at once"
    )
    # Kubernetes takes a stopping pod out of its Service's endpoints only after a while; meanwhile the
    # replica must still accept connections (app/drain.py).
    drain_delay_s: float = Field(
        10.0,
        ge=0,
        description="after `renersans drain`, seconds of serving with /ready 503 before the shutdown",
    )
    batch_size: int = Field(32, gt=0, description="sequences per encoder batch")
    max_run_pieces: int = Field(
        0,
        ge=0,
        description="padded pieces per encoder run, bounding its memory (0: 1024 on a CPU, 8192 on CUDA)",
    )
    cpu_arena: bool = Field(
        True, description="ONNX Runtime's CPU memory arena (off: each run's buffers are freed after it)"
    )
    # Cross-request batching (app/batching.py); off by default: on the CPU it measured slower (BENCHMARKS.md).
    batch_wait_ms: float = Field(
        0.0, ge=0, description="merge concurrent requests' encoder rows, waiting up to this long (0: off)"
    )
    batch_max_rows: int = Field(64, gt=0, description="rows per merged batch when batch_wait_ms > 0")
    threads: int = Field(
        0, ge=0, description="cores for ONNX Runtime, shared by the encoder runs in flight (0: one per core)"
    )
    encoder_runs: int = Field(
        0,
        ge=0,
        description="encoder batches one request runs at once, each on threads / encoder_runs ONNX Runtime "
        "threads (0: one per core on a CPU, 1 on CUDA)",
    )
    api_key: str = Field("", description="when set, requests need the header X-API-Key with this value")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (empty: none)"
    )
    log_level: str = "INFO"
    log_text: bool = Field(False, description="include request text in logs (off: only sizes and counts)")
    fault_injection: bool = Field(
        False,
        description="tests only: obey the X-Renersans-Fault header (app/faults.py); never in production",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        # A comma-separated string, as environment variables are written; also a JSON list for compatibility.
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
