"""Routes: parse, call a service, shape the response. No SQL and no business logic here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from helpline.api.deps import ChatDep, PrincipalDep, RequestIdDep, ServicesDep, require_json
from helpline.api.responses import JsonResponse
from helpline.api.schemas import ChatRequest, ChatResponse, ErrorResponse, Readiness, SessionMessages
from helpline.store.repositories import ping

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 429, 503)
}
router = APIRouter()


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    responses=ERRORS,
    dependencies=[Depends(require_json)],
    summary="Ask a question",
)
async def chat(
    body: ChatRequest, chat: ChatDep, principal: PrincipalDep, request_id: RequestIdDep, response: Response
) -> ChatResponse:
    result = await chat.chat(
        body.message,
        principal=principal,
        request_id=request_id,
        session_id=body.session_id,
        locale=body.locale,
    )
    response.headers["X-Cache"] = {"miss": "MISS", "exact": "HIT-EXACT", "semantic": "HIT-SEMANTIC"}[result.cache]
    return ChatResponse.model_validate(
        {
            "reply": result.reply,
            "session_id": result.session_id,
            "message_id": result.message_id,
            "provider": result.provider,
            "model": result.model,
            "cache": result.cache,
            "action": result.action,
            "citations": result.citations,
            "latency_ms": result.latency_ms,
            "request_id": result.request_id,
        }
    )


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
    ready = checks["database"] == "ok" and checks["providers"] == "ok"
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
