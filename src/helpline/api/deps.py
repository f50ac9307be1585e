"""Dependencies: the services built by the lifespan, the caller's identity, and input guards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpline.chat.service import ChatService
from helpline.config import Settings
from helpline.errors import Unauthorized, UnsupportedMediaType
from helpline.knowledge.base import KnowledgeBase
from helpline.providers.base import Provider
from helpline.store.repositories import ANONYMOUS, ApiKeyRepository, Principal


@dataclass(slots=True)
class Services:
    """Everything the lifespan builds once; routes reach it through the dependencies below."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    api_keys: ApiKeyRepository
    knowledge: KnowledgeBase
    provider: Provider
    chat: ChatService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_chat(services: ServicesDep) -> ChatService:
    return services.chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


async def get_principal(request: Request, services: ServicesDep) -> Principal:
    """Anonymous without an Authorization header; a wrong or malformed key is refused, never ignored."""
    header = request.headers.get("authorization")
    if header is None:
        return ANONYMOUS
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("Authorization must be 'Bearer <api key>'", code="invalid_api_key")
    principal = await services.api_keys.authenticate(credentials.strip())
    if principal is None:
        raise Unauthorized("the API key is not valid", code="invalid_api_key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_json(request: Request) -> None:
    """415 for a body that is not declared as JSON (checked before the body is parsed)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")


def request_id(request: Request) -> str:
    value: str = request.scope.get("state", {}).get("request_id", "")
    return value


RequestIdDep = Annotated[str, Depends(request_id)]
