"""The service's endpoints, one router per concern. A new endpoint is one route in one of these routers:
the API key, the metrics' `endpoint` label and the JSON content-type check all follow from the route."""

from __future__ import annotations

from fastapi.routing import APIRoute

from app.routes import brat, extract, probes, relations

# Their endpoints read documents: behind the API key where one is configured (app/deps.py's guards).
GUARDED = (extract.router, relations.router, brat.router)
OPEN = (probes.router,)


def api_routes() -> list[APIRoute]:
    """Every endpoint, in the order they are served (and documented at /docs)."""
    return [route for router in (*GUARDED, *OPEN) for route in router.routes if isinstance(route, APIRoute)]
