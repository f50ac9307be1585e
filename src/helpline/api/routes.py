"""Routes: parse, call a service, shape the response. No SQL and no business logic here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.dependencies.models import Dependant

# FastAPI builds an included route's handler with the inclusion's combined dependencies in this context variable
# (its own APIRoute.get_route_handler reads it the same way). Private: an upgrade that drops it fails this import
# loudly rather than letting DirectRoute skip dependencies silently; the version is pinned in the lock file.
from fastapi.routing import APIRoute, _effective_route_context_var
from sse_starlette import EventSourceResponse

from helpline.api.deps import AdminDep, ChatDep, PrincipalDep, Services, ServicesDep, caller_and_body, conversations_of
from helpline.api.limits import charge
from helpline.api.responses import JsonResponse
from helpline.api.schemas import ChatRequest, ChatResponse, ErrorResponse, Readiness, SessionMessages
from helpline.chat.service import ChatEvent, clean_message
from helpline.observability.alerts import alert_report
from helpline.store.repositories import ping

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 429, 503)
}
router = APIRouter()


class DirectRoute(APIRoute):
    """A route FastAPI documents as usual (body schema, responses) but calls directly: ``endpoint(request)``.

    For the one hot path, ``POST /v1/chat``, whose endpoint takes only the request, parses its own body
    (deps.caller_and_body) and returns a ready Response. FastAPI's request handler would still run its dependency
    solver on every call (with a scratch Response for dependency headers) and check the return value, about 30 µs
    of a cached answer's 220 µs in process. Uses FastAPI's documented extension point (a custom APIRoute class).
    Nothing would resolve a dependency or parameter here, so an endpoint that declares one is refused when FastAPI
    builds its handler: at once for the endpoint's own, on the route's first use for one added where its router is
    included (FastAPI builds included routes lazily); never silently skipped.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        context = _effective_route_context_var.get()
        dependant = context.dependant if context is not None and context.original_route is self else self.dependant
        _refuse_declared(self.path, dependant, self.endpoint)
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request)

        return handler


def _refuse_declared(path: str, dependant: Dependant, endpoint: Callable[..., Any]) -> None:
    declared = (dependant.dependencies, dependant.path_params, dependant.query_params, dependant.header_params,
                dependant.cookie_params, dependant.body_params)  # fmt: skip
    parameters = list(inspect.signature(endpoint).parameters.values())
    takes_only_the_request = (
        len(parameters) == 1
        and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and inspect.iscoroutinefunction(endpoint)
    )
    if any(declared) or not takes_only_the_request:
        raise TypeError(f"{path}: a DirectRoute endpoint is `async def endpoint(request)` and depends on nothing")


# Routes on the DirectRoute class; they are included in the app like ``router``.
direct_router = APIRouter(route_class=DirectRoute)


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "The answer; with `stream: true` or `Accept: text/event-stream`, server-sent events "
        "`meta`, `delta` {text}…, then `done` (this body) or `error` (the error body).",
        # One parsed server-sent event (OpenAPI 3.1 puts the per-event schema under `schema`).
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["meta", "delta", "done", "error"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            }
        },
    },
}
# The body is parsed in the route (deps.caller_and_body), so its schema is documented here rather than inferred:
# as the same named component FastAPI made of it before (client generators keep their ChatRequest type).
CHAT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
}
DOCUMENTED_MODELS = {"ChatRequest": ChatRequest}


def document_models(app: FastAPI) -> None:
    """Add the models that routes parse themselves to the app's OpenAPI components (generated once, cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI's generator builds the document once and caches it on the app
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for name, model in DOCUMENTED_MODELS.items():
                schemas.setdefault(name, model.model_json_schema(ref_template="#/components/schemas/{model}"))
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]


X_CACHE = {"miss": "MISS", "exact": "HIT-EXACT", "semantic": "HIT-SEMANTIC"}


@direct_router.post(
    "/v1/chat",
    response_model=ChatResponse,
    responses=CHAT_RESPONSES,
    summary="Ask a question",
    openapi_extra={"requestBody": CHAT_BODY},
)
async def chat(request: Request) -> Response:
    caller, body = await caller_and_body(request, ChatRequest)
    services = caller.services
    # Charged only once the request is known to be acceptable (see api/limits.py): the schema was checked just
    # above, the message is checked here.
    clean_message(body.message, services.settings.max_message_chars)
    await charge(request, services, caller.principal, session_id=body.session_id)
    context: dict[str, Any] = {
        "principal": caller.principal,
        "request_id": caller.request_id,
        "session_id": body.session_id,
        "locale": body.locale,
    }
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        prepared = await caller.chat.prepare(body.message, **context)
        # A hit found while preparing is replayed as a stream and says so; a miss may still be landed by a peer
        # mid-stream, which the stream's own events report (the header is sent before that is known).
        x_cache = X_CACHE["miss" if prepared.hit is None else prepared.hit.tier]
        return EventSourceResponse(sse_events(caller.chat.chat_stream(prepared)), headers={"X-Cache": x_cache}, ping=15)
    result = await caller.chat.chat(body.message, **context)
    # Rendered here with orjson: the body is the contract's shape by construction (ChatResult.body, tested against
    # the OpenAPI schema), so FastAPI's second validation of it through response_model is skipped on the hot path.
    return JsonResponse(result.body(), headers={"X-Cache": X_CACHE[result.cache]})


async def sse_events(events: AsyncIterator[ChatEvent]) -> AsyncIterator[dict[str, str]]:
    async for event in events:
        data = {"error": event.data} if event.kind == "error" else event.data
        yield {"event": event.kind, "data": orjson.dumps(data).decode()}


@router.get("/v1/sessions/{session_id}/messages", response_model=SessionMessages, responses=ERRORS)
async def session_messages(session_id: str, chat: ChatDep, principal: PrincipalDep) -> SessionMessages:
    messages = await chat.messages(session_id, principal)
    return SessionMessages.model_validate({"session_id": session_id, "messages": messages})


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
async def readyz(services: ServicesDep) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        await ping(services.sessions)
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready; the type is reported
        checks["database"] = f"down: {type(error).__name__}"
    checks["providers"] = "ok" if await services.provider.health() else "down: no usable provider"
    checks["knowledge"] = "ok" if len(services.knowledge) else "empty"
    if services.cache is not None:
        # Reported, not required: without its cache store the service still answers (it bypasses the cache).
        up = await services.cache.connect(timeout_s=0.5)
        checks["cache"] = f"ok ({services.cache.backend.kind})" if up else "down: bypassed"
    ready = checks["database"] == "ok" and checks["providers"] == "ok"
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/v1/admin/stats", responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def admin_stats(_admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """Basic counts for operators (admin token or admin key)."""
    return await operator_counts(services)


async def operator_counts(services: Services) -> dict[str, Any]:
    """The counts of ``GET /v1/admin/stats``, which the dashboard shows too."""
    conversations = conversations_of(services)
    return {
        "conversations": await conversations.count(),
        "sessions": await conversations.count_sessions(),
        "documents": len(services.knowledge),
        "rate_limit": services.limiter.stats() if services.limiter is not None else {},
        "alerts": alert_report(),  # the Prometheus rules, evaluated over this process's recent traffic
    }
