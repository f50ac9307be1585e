"""DirectRoute (the hot chat route) calls its endpoint without FastAPI's dependency solver, so it must refuse an
endpoint that declares anything to solve."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, Request, Response

from helpline.api.routes import DirectRoute


async def _dependency() -> str:
    return "never resolved"


def test_an_endpoint_with_a_dependency_is_refused_at_start() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request, value: Annotated[str, Depends(_dependency)]) -> Response:
        return Response(value)

    with pytest.raises(TypeError, match="takes only the request"):
        router.add_api_route("/x", endpoint, methods=["POST"])


def test_an_endpoint_with_a_query_parameter_is_refused_at_start() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request, q: str) -> Response:
        return Response(q)

    with pytest.raises(TypeError, match="takes only the request"):
        router.add_api_route("/x", endpoint, methods=["GET"])


def test_an_endpoint_taking_only_the_request_is_accepted() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request) -> Response:
        return Response(request.url.path)

    router.add_api_route("/x", endpoint, methods=["GET"])
    assert [route.path for route in router.routes] == ["/x"]  # type: ignore[attr-defined]
