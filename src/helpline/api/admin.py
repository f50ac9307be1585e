"""Admin endpoints (admin token or admin API key): cache invalidation and knowledge document upserts."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator

from helpline.api.deps import AdminDep, Services, ServicesDep, require_json
from helpline.api.schemas import ErrorResponse
from helpline.errors import InvalidInput, NotFound
from helpline.knowledge.documents import DOC_ID_PATTERN, SourceDocument
from helpline.store.repositories import KnowledgeRepository

router = APIRouter(prefix="/v1/admin", tags=["admin"])
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 413, 415, 422, 503)
}


class InvalidateRequest(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=500)


class InvalidateResponse(BaseModel):
    removed: int


class DocumentIn(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    text: str = Field(min_length=1, max_length=50_000)
    kind: Literal["faq", "policy", "product"] = "policy"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Metadata is stored as JSON on every backend: 64-bit numbers, at most 10 kB."""
        try:
            encoded = orjson.dumps(value)
        except TypeError as error:  # e.g. an integer beyond 64 bits
            raise ValueError(f"metadata must be plain JSON: {error}") from error
        if len(encoded) > 10_000:
            raise ValueError("metadata must be at most 10 kB of JSON")
        return value


class DocumentOut(BaseModel):
    id: str
    removed: int
    created: bool  # no document had this id before


@router.post(
    "/cache/invalidate", response_model=InvalidateResponse, responses=ADMIN_ERRORS, dependencies=[Depends(require_json)]
)
async def invalidate_cache(body: InvalidateRequest, _admin: AdminDep, services: ServicesDep) -> InvalidateResponse:
    """Remove every cached answer that drew on one of these document ids or ingest tags."""
    assert services.invalidator is not None  # noqa: S101 - built by the lifespan
    return InvalidateResponse(removed=await services.invalidator.invalidate(body.tags))


def check_document_id(document_id: str) -> None:
    """422 for an id the knowledge base cannot hold (the same rule as ingested files)."""
    if not DOC_ID_PATTERN.match(document_id):
        raise InvalidInput(f"document id must match {DOC_ID_PATTERN.pattern}", code="invalid_document_id")


async def save_document(services: Services, document_id: str, body: DocumentIn, *, source: str) -> DocumentOut:
    """Create or replace a knowledge document, re-index it and drop the cached answers that drew on it.

    The one path for every writer of a single document (this API and the dashboard's editor). An FAQ's question
    and answer are its title and text unless the metadata names them. The stored document's ingest tags are kept
    (neither writer sets them): dropped, the answers drawn on the new text would not carry them, and an
    invalidation by tag (`helpline cache invalidate --tag`) would leave those answers stale."""
    check_document_id(document_id)
    assert services.invalidator is not None  # noqa: S101 - built by the lifespan
    stored = await KnowledgeRepository(services.sessions).get(document_id)
    metadata = dict(body.metadata)
    if body.kind == "faq":
        metadata.setdefault("question", body.title)
        metadata.setdefault("answer", body.text)
    tags = list(stored.tags or []) if stored is not None else []
    document = SourceDocument(document_id, body.kind, body.title.strip(), body.text.strip(), metadata, tags, source)
    removed = await services.invalidator.upsert_document(document)
    return DocumentOut(id=document_id, removed=removed, created=stored is None)


class DeletedOut(BaseModel):
    id: str
    removed: int  # cached answers that drew on it


@router.delete(
    "/kb/documents/{document_id}", response_model=DeletedOut, responses={**ADMIN_ERRORS, 404: {"model": ErrorResponse}}
)
async def delete_document(document_id: str, _admin: AdminDep, services: ServicesDep) -> DeletedOut:
    """Remove a knowledge document (a discontinued product, a withdrawn policy) and the answers that drew on it."""
    return await remove_document(services, document_id)


async def remove_document(services: Services, document_id: str) -> DeletedOut:
    """The one path for every remover of a document (this API and the dashboard)."""
    check_document_id(document_id)
    assert services.invalidator is not None  # noqa: S101 - built by the lifespan
    removed = await services.invalidator.delete_document(document_id)
    if removed is None:
        raise NotFound(f"no knowledge document {document_id!r}", code="document_not_found")
    return DeletedOut(id=document_id, removed=removed)


@router.put(
    "/kb/documents/{document_id}", response_model=DocumentOut, responses=ADMIN_ERRORS,
    dependencies=[Depends(require_json)],
)  # fmt: skip
async def upsert_document(document_id: str, body: DocumentIn, _admin: AdminDep, services: ServicesDep) -> DocumentOut:
    """Create or replace a knowledge document; the answers that drew on it are invalidated."""
    return await save_document(services, document_id, body, source="admin-api")
