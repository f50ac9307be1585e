"""Pages and the dashboard's JSON: ``/``, ``/widget.js``, ``/static/*``, ``/admin`` (+ login), the export and the
knowledge-document editor's ``/admin/api/documents``.

Pages are static files with no inline script or style, so the strict CSP of api/security.py holds on them. The
admin pages authenticate with a signed HttpOnly cookie (web/auth.py); the export also takes the admin Bearer token.
"""

from __future__ import annotations

import html
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from helpline.api.admin import DocumentIn, remove_document, save_document
from helpline.api.deps import ServicesDep, conversations_of, require_admin, require_json
from helpline.api.routes import operator_counts
from helpline.api.security import same_secret
from helpline.errors import Forbidden, NotFound, Unauthorized, UnsupportedMediaType
from helpline.providers.router import FallbackRouter
from helpline.store.repositories import KnowledgeRepository
from helpline.web import auth
from helpline.web.dashboard import conversation_row, dashboard_stats, document_row, document_view
from helpline.web.export import MEDIA_TYPES, export_lines

WEB_ROOT = Path(__file__).resolve().parent
STATIC = WEB_ROOT / "static"
TEMPLATES = WEB_ROOT / "templates"
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(js|css|svg|png)$")
CONTENT_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}
STATIC_CACHE = "public, max-age=300"
router = APIRouter(include_in_schema=False)


@cache
def read_template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    """The template with each ``{{key}}`` replaced by the HTML-escaped value (nothing else is substituted)."""
    page = read_template(name)
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value, quote=True))
    return page


def static_file(name: str) -> Response:
    match = STATIC_NAME.match(name)
    path = STATIC / name
    if match is None or not path.is_file():
        raise NotFound("no such file", code="not_found")
    headers = {"Cache-Control": STATIC_CACHE}
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[match.group(1)], headers=headers)


@router.get("/")
async def store_page() -> HTMLResponse:
    return HTMLResponse(render("index.html"))


@router.get("/widget.js")
async def widget_js() -> Response:
    return static_file("widget.js")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return static_file(name)


@router.get("/admin")
async def admin_page(request: Request, services: ServicesDep) -> HTMLResponse:
    if await auth.has_admin_session(request, services):
        return page_with_csrf(request, "admin.html", 200)
    return login_page(request, "", 200)


def login_page(request: Request, error: str, status: int) -> HTMLResponse:
    return page_with_csrf(request, "login.html", status, error=error)


def page_with_csrf(request: Request, name: str, status: int, **values: str) -> HTMLResponse:
    """A private page whose forms carry the double-submit CSRF token (set as a cookie when missing)."""
    response = HTMLResponse(status_code=status, headers={"Cache-Control": "no-store"})
    token = auth.csrf_token(request, response)
    response.body = response.render(render(name, csrf=token, **values))
    response.headers["content-length"] = str(len(response.body))
    return response


async def form_fields(request: Request) -> dict[str, str]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("send the form as application/x-www-form-urlencoded")
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    return {name: values[0] for name, values in parsed.items()}


async def is_admin_secret(token: str, services: ServicesDep) -> bool:
    """The admin token, or an admin API key (embedded installs print one instead of using a token)."""
    admin_token = services.settings.admin_token
    if admin_token is not None and same_secret(token, admin_token.get_secret_value()):
        return True
    principal = await services.api_keys.authenticate(token) if token.startswith("hl_") else None
    return principal is not None and principal.is_admin


@router.post("/admin/login")
async def admin_login(request: Request, services: ServicesDep) -> Response:
    fields = await form_fields(request)
    if not auth.csrf_matches(request, fields.get("csrf", "")):
        return login_page(request, "Your session expired; please try again.", 403)
    if not await is_admin_secret(fields.get("token", "").strip(), services):
        return login_page(request, "That admin token is not valid.", 401)
    response = RedirectResponse("/admin", status_code=303)
    auth.set_session_cookie(response, request, auth.make_session_value(await auth.signing_key(request, services)))
    return response


@router.post("/admin/logout")
async def admin_logout(request: Request) -> Response:
    fields = await form_fields(request)
    if not auth.csrf_matches(request, fields.get("csrf", "")):
        return login_page(request, "Your session expired; please try again.", 403)
    response = RedirectResponse("/admin", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


async def require_admin_cookie(request: Request, services: ServicesDep) -> None:
    if not await auth.has_admin_session(request, services):
        raise Unauthorized("sign in at /admin first", code="admin_login_required")


async def require_admin_cookie_or_token(request: Request, services: ServicesDep) -> None:
    if "authorization" in request.headers or not await auth.has_admin_session(request, services):
        await require_admin(request, services)


@router.get("/admin/api/stats", dependencies=[Depends(require_admin_cookie)])
async def admin_api_stats(services: ServicesDep) -> dict[str, Any]:
    """The same counts as ``GET /v1/admin/stats`` plus the last 24 hours' series and shares."""
    counts = await operator_counts(services)
    return {**counts, **await dashboard_stats(conversations_of(services), provider_chain(services)[0])}


def provider_chain(services: ServicesDep) -> list[str]:
    """The providers the router tries, in order: the configured chain less those disabled at start (Gemini
    without a key), with the extractive answerer last."""
    router = services.provider
    return [p.name for p in router.providers] if isinstance(router, FallbackRouter) else [router.name]


@router.get("/admin/api/conversations", dependencies=[Depends(require_admin_cookie)])
async def admin_api_conversations(
    *,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=200)] = "",
    provider: Annotated[str, Query(max_length=32)] = "",
    cache_state: Annotated[str, Query(alias="cache", max_length=16)] = "",
    action: Annotated[str, Query(max_length=16)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    filters = {"q": q.strip(), "provider": provider, "cache": cache_state, "action": action}
    rows = await conversations_of(services).search(filters, limit)
    return {"conversations": [conversation_row(row) for row in rows]}


@router.get("/v1/admin/conversations", dependencies=[Depends(require_admin_cookie_or_token)])
async def export_conversations(
    services: ServicesDep, export_format: Annotated[Literal["csv", "jsonl"], Query(alias="format")] = "jsonl"
) -> StreamingResponse:
    """Every conversation with its feedback, streamed in pages (a large export is never held in memory)."""
    disposition = f'attachment; filename="helpline-conversations.{export_format}"'
    return StreamingResponse(
        export_lines(conversations_of(services), export_format),
        media_type=MEDIA_TYPES[export_format],
        headers={"Content-Disposition": disposition},
    )


# --- the knowledge-document editor: cookie-authenticated JSON; saving also needs the CSRF token in a header ---


async def require_csrf_header(request: Request) -> None:
    """Double submit for the dashboard's JSON writes: the page's CSRF token (from its hidden form field) must come
    back in ``X-CSRF-Token`` and equal the HttpOnly CSRF cookie, which a cross-site page can neither read nor set."""
    if not auth.csrf_matches(request, request.headers.get(auth.CSRF_HEADER, "")):
        raise Forbidden("the X-CSRF-Token header is missing or wrong; reload the dashboard", code="csrf_failed")


def knowledge_of(services: ServicesDep) -> KnowledgeRepository:
    return KnowledgeRepository(services.sessions)


@router.get("/admin/api/documents", dependencies=[Depends(require_admin_cookie)])
async def admin_api_documents(
    *,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=200)] = "",
    kind: Annotated[Literal["", "faq", "policy", "product"], Query()] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    """The documents whose id, title or text contains ``q``, by id; ``truncated`` when more would match."""
    rows = await knowledge_of(services).find(q.strip(), kind, limit + 1)
    return {"documents": [document_row(row) for row in rows[:limit]], "truncated": len(rows) > limit}


@router.get("/admin/api/documents/{document_id}", dependencies=[Depends(require_admin_cookie)])
async def admin_api_document(document_id: str, services: ServicesDep) -> dict[str, Any]:
    document = await knowledge_of(services).get(document_id)
    if document is None:
        raise NotFound("no knowledge document has this id", code="document_not_found")
    return document_view(document)


@router.put(
    "/admin/api/documents/{document_id}",
    dependencies=[Depends(require_admin_cookie), Depends(require_csrf_header), Depends(require_json)],
)
async def admin_api_save_document(document_id: str, body: DocumentIn, services: ServicesDep) -> dict[str, Any]:
    """Save through the admin API's own path (``PUT /v1/admin/kb/documents/{id}``): re-index, then remove the cached
    answers that drew on the document. The stored document's ingest tags are kept (the editor does not show them)."""
    return (await save_document(services, document_id, body, source="admin-dashboard")).model_dump()


@router.delete(
    "/admin/api/documents/{document_id}", dependencies=[Depends(require_admin_cookie), Depends(require_csrf_header)]
)
async def admin_api_delete_document(document_id: str, services: ServicesDep) -> dict[str, Any]:
    """Delete through the admin API's own path (``DELETE /v1/admin/kb/documents/{id}``)."""
    return (await remove_document(services, document_id)).model_dump()
