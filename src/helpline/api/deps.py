"""Dependencies: the services built by the lifespan, the caller's identity, and input guards."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import ClientDisconnect

from helpline.api.security import same_secret
from helpline.cache.invalidation import Invalidator
from helpline.cache.service import AnswerCache
from helpline.chat.service import ChatService
from helpline.config import Settings
from helpline.errors import BadRequest, Forbidden, Unauthorized, UnsupportedMediaType
from helpline.knowledge.base import KnowledgeBase
from helpline.providers.base import Provider
from helpline.ratelimit.service import RateLimiter
from helpline.store.repositories import ANONYMOUS, ApiKeyRepository, ConversationRepository, Principal

# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which costs
# a thread hop per dependency per request (measured: about a quarter of a cached answer's time).


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
    limiter: RateLimiter | None = None  # built in the lifespan; None only where a test builds Services by hand
    cache: AnswerCache | None = None
    invalidator: Invalidator | None = None
    conversations: ConversationRepository | None = None  # with the write-behind writer of this process


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def conversations_of(services: Services) -> ConversationRepository:
    """The process's own repository (whose reads flush its write-behind queue first, so recent exchanges count)."""
    return services.conversations or ConversationRepository(services.sessions)


async def get_chat(services: ServicesDep) -> ChatService:
    return services.chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


async def get_principal(request: Request, services: ServicesDep) -> Principal:
    """Anonymous without an Authorization header; a wrong or malformed key is refused, never ignored."""
    return await authenticate(request, services)


async def authenticate(request: Request, services: Services) -> Principal:
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
ADMIN_TOKEN_HOLDER = Principal(key_id=None, name="admin-token", is_admin=True)
_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def require_admin(request: Request, services: ServicesDep) -> Principal:
    """The admin token (compared in constant time) or an admin API key; 401 without or with a wrong one, 403 for a
    valid non-admin key. Checked before anything else the admin route does."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin token>'", headers=_BEARER_CHALLENGE)
    admin_token = services.settings.admin_token
    if admin_token is not None and same_secret(token, admin_token.get_secret_value()):
        return ADMIN_TOKEN_HOLDER
    principal = await services.api_keys.authenticate(token)
    if principal is None:
        raise Unauthorized("the admin token is not valid", code="invalid_admin_token", headers=_BEARER_CHALLENGE)
    if not principal.is_admin:
        raise Forbidden("this API key is not an admin key", code="not_admin")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


@dataclass(frozen=True, slots=True)
class Caller:
    """What a chat route needs to know about its request, resolved as ONE dependency.

    FastAPI resolves every dependency node on every request (sub-dependencies included, with a cache-key
    computation each): the chat route's former six dependencies (services, chat, principal, request id, JSON check,
    limits) cost about a fifth of a cached answer's time (py-spy, bench.cache). A cache hit is the hot path."""

    services: Services
    principal: Principal
    request_id: str

    @property
    def chat(self) -> ChatService:
        return self.services.chat


async def get_caller(request: Request) -> Caller:
    """A JSON body (415 otherwise) from an anonymous caller or one with a valid API key (401 otherwise)."""
    await require_json(request)
    return await identify(request)


async def identify(request: Request) -> Caller:
    """The request's caller: anonymous, or the holder of a valid API key (401 otherwise)."""
    services: Services = request.app.state.services
    return Caller(services, await authenticate(request, services), await request_id(request))


CallerDep = Annotated[Caller, Depends(get_caller)]
Body = TypeVar("Body", bound=BaseModel)


async def caller_and_body(request: Request, model: type[Body]) -> tuple[Caller, Body]:
    """The hot chat route's caller and body, refused in the order FastAPI would refuse them: 415 (not declared as
    JSON), 400 (not valid JSON), 401 (a bad API key), 422 (not the schema).

    The body is parsed and validated in one pass by pydantic-core (``model_validate_json``) instead of FastAPI's
    ``json.loads``, then validation through its dependency solver: that machinery was about a tenth of a cached
    answer's CPU (py-spy, bench.cache). The route documents the schema itself (``openapi_extra``).

    Bodies ``json.loads`` accepted still parse: with a UTF-8 byte order mark (some .NET and PowerShell clients send
    one), or in UTF-16/32. The errors keep no ``input``: for a syntax error that would be the whole body, whatever
    the shopper typed."""
    await require_json(request)
    try:
        raw = await request.body()
    except ClientDisconnect:
        # Gone before the body arrived: nobody reads the answer, but the log and the metrics must not call it ours.
        raise BadRequest("the request body was not received completely") from None
    invalid: list[Any] = []
    try:
        body = model.model_validate_json(_as_utf8(raw))
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        invalid = [{**item, "loc": ("body", *item["loc"])} for item in errors]
        if any(item["type"] == "json_invalid" for item in invalid):
            raise RequestValidationError(invalid) from None
    caller = await identify(request)
    if invalid:
        raise RequestValidationError(invalid)
    return caller, body


def _as_utf8(raw: bytes) -> bytes | str:
    """The body for pydantic-core, which reads UTF-8 only: a UTF-8 byte order mark dropped, UTF-16/32 decoded (the
    encodings ``json.loads`` detects from the first bytes, as RFC 8259 allows; cheap checks of the first bytes)."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :]
    if raw[:1] == b"\x00" or raw[1:2] == b"\x00" or raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode(json.detect_encoding(raw))
        except UnicodeDecodeError:
            return raw  # refused as invalid JSON by the parser
    return raw


async def require_json(request: Request) -> None:
    """415 for a body that is not declared as JSON (checked before the body is parsed)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")


async def request_id(request: Request) -> str:
    value: str = request.scope.get("state", {}).get("request_id", "")
    return value
