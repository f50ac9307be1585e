"""`POST /v1/feedback`: a thumbs up/down (and optional comment) on one reply, stored with the message."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from helpline.api.deps import PrincipalDep, ServicesDep, require_json
from helpline.api.schemas import ErrorResponse
from helpline.errors import NotFound
from helpline.store.repositories import FeedbackRepository

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422)
}


class FeedbackIn(BaseModel):
    message_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=2000)


class FeedbackOut(BaseModel):
    message_id: str
    rating: Literal["up", "down"]


@router.post("/v1/feedback", response_model=FeedbackOut, responses=ERRORS, dependencies=[Depends(require_json)])
async def give_feedback(body: FeedbackIn, principal: PrincipalDep, services: ServicesDep) -> FeedbackOut:
    """Only the owner of the conversation may rate its replies; a foreign or unknown message is 404."""
    if services.conversations is not None:
        await services.conversations.flush()  # the reply may still be in the write-behind queue
    repository = FeedbackRepository(services.sessions)
    exists, owner = await repository.message_owner(body.message_id)
    if not exists or owner != principal.key_id:
        raise NotFound("no such message for this caller", code="message_not_found")
    comment = body.comment.strip() if body.comment and body.comment.strip() else None
    await repository.upsert(body.message_id, body.rating, comment)
    return FeedbackOut(message_id=body.message_id, rating=body.rating)
