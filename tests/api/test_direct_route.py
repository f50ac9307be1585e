"""DirectRoute (the hot chat route) calls its endpoint without FastAPI's dependency solver, so it must refuse an
endpoint that declares anything to solve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

from helpline.api.routes import DirectRoute


async def _dependency() -> str:
    return "never resolved"


def test_an_endpoint_with_a_dependency_is_refused_at_start() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request, value: Annotated[str, Depends(_dependency)]) -> Response:
        return Response(value)

    with pytest.raises(TypeError, match="depends on nothing"):
        router.add_api_route("/x", endpoint, methods=["POST"])


def test_an_endpoint_with_a_query_parameter_is_refused_at_start() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request, q: str) -> Response:
        return Response(q)

    with pytest.raises(TypeError, match="depends on nothing"):
        router.add_api_route("/x", endpoint, methods=["GET"])


def test_an_endpoint_taking_only_the_request_is_accepted() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request) -> Response:
        return Response(request.url.path)

    router.add_api_route("/x", endpoint, methods=["GET"])
    assert [route.path for route in router.routes] == ["/x"]  # type: ignore[attr-defined]


def test_a_dependency_added_where_the_router_is_included_is_refused_too() -> None:
    router = APIRouter(route_class=DirectRoute)

    async def endpoint(request: Request) -> Response:
        return Response(request.url.path)

    router.add_api_route("/x", endpoint, methods=["GET"])
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(_dependency)])
    # FastAPI builds an included route's handler lazily, on first use: the first request fails, never answers.
    with pytest.raises(TypeError, match="depends on nothing"):
        TestClient(app).get("/x")


async def _with_response(request: Request, response: Response) -> Response:
    return response


async def _keyword_only(*, request: Request) -> Response:
    return Response()


def _not_async(request: Request) -> Response:
    return Response()


@pytest.mark.parametrize("endpoint", [_with_response, _keyword_only, _not_async], ids=lambda f: f.__name__)
def test_an_endpoint_that_is_not_async_def_of_the_request_alone_is_refused(endpoint: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="depends on nothing"):
        APIRouter(route_class=DirectRoute).add_api_route("/x", endpoint, methods=["GET"])
