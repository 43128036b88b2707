"""API fuzzing: schemathesis reads the service's own OpenAPI schema from a real uvicorn process, generates
requests for every operation (valid ones and invalid ones) and checks each answer: never a 5xx, a status
code the schema documents, the documented content type and headers, and a body that matches the schema.

Bounded: a fixed number of examples per operation and mode, a deadline per example, a timeout per request.
(schemathesis' own pytest fixture loader does not work with this pytest, so the operations are listed from
the application built in-process, and each test fetches its operation from the running server's schema.)
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings

# `positive_data_acceptance` is left out on purpose: a schema cannot say "a .txt or .zip file, in UTF-8",
# so schema-valid uploads that break those rules are rightly refused (400, 415); the bad-input matrix
# (tests/test_server_reliability.py) checks those refusals one by one.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every operation: valid requests for all; invalid ones for those with
    something typed to break, parameters or a JSON body (any bytes make a valid upload or text body)."""
    paths = create_app(Settings(_env_file=None, bundle=Path("/nonexistent"))).openapi()["paths"]
    found = []
    for path, methods in paths.items():
        for method, operation in methods.items():
            found.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or "application/json" in operation.get("requestBody", {}).get(
                "content", {}
            ):
                found.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(found)


OPERATIONS = operations()


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.schemas.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", timeout=30)
    served = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert served == {(m, p) for m, p, _ in OPERATIONS}, (
        "the running server's schema is not the application's"
    )
    return schema


@pytest.mark.parametrize(
    ("method", "path", "mode"), OPERATIONS, ids=[f"{m} {p} {g}" for m, p, g in OPERATIONS]
)
def test_api_answers_as_documented(
    api_schema: schemathesis.schemas.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=30,
        deadline=timedelta(seconds=15),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    answers_as_documented()
