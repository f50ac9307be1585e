"""The dashboard's knowledge-document editor over HTTP: the cookie and CSRF guards, the document list, and saving
through the admin API's path (re-index, then exactly the cached answers that drew on the document are removed)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.store.repositories import KnowledgeRepository
from helpline.web import auth
from tests.conftest import Api, make_settings, running_api
from tests.web.test_pages import ORIGIN, XSS, login

DELIVERY = "policy-delivery.delivery-times"
NEW_DELIVERY = {"title": "Delivery times", "text": "Every order now arrives within 2 hours.", "kind": "policy"}


@pytest.fixture
async def web(sqlite_url: str, embedder: Embedder) -> AsyncIterator[Api]:
    async with running_api(make_settings(sqlite_url), embedder) as running:
        yield running


async def ask(api: Api, message: str) -> dict[str, Any]:
    """A shopper's question (from our origin: once signed in, the client also carries the admin cookies)."""
    response = await api.client.post("/v1/chat", json={"message": message}, headers=ORIGIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def signed_in(client: httpx.AsyncClient) -> dict[str, str]:
    """Signs in; the headers the dashboard's JavaScript sends with a write (our origin and the CSRF token)."""
    assert (await login(client)).status_code == 303
    page = (await client.get("/admin")).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    return {**ORIGIN, "x-csrf-token": token.group(1)}


def expected_ids(api: Api, q: str, kind: str = "") -> list[str]:
    """The documents whose id, title or text contain ``q`` in any case, from the in-memory knowledge base."""
    return sorted(
        p.id
        for p in api.services.knowledge.passages()
        if q.lower() in f"{p.id}\n{p.title}\n{p.text}".lower() and kind in ("", p.kind)
    )


async def test_the_editor_endpoints_need_the_admin_cookie(web: Api) -> None:
    for method, path in [
        ("GET", "/admin/api/documents"),
        ("GET", f"/admin/api/documents/{DELIVERY}"),
        ("PUT", f"/admin/api/documents/{DELIVERY}"),
        ("DELETE", f"/admin/api/documents/{DELIVERY}"),
    ]:
        response = await web.client.request(method, path, json=NEW_DELIVERY, headers=ORIGIN)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "admin_login_required"
    bearer = {"authorization": "Bearer test-admin-token-0123456789abcdef"}  # the API's token is not a session
    assert (await web.client.get("/admin/api/documents", headers=bearer)).status_code == 401
    assert (await web.client.get(f"/admin/api/documents/{DELIVERY}")).status_code == 401
    document = await KnowledgeRepository(web.services.sessions).get(DELIVERY)
    assert document is not None
    assert document.text != NEW_DELIVERY["text"]  # nothing was written


async def test_saving_needs_the_csrf_token_in_a_header_and_our_origin(web: Api) -> None:
    headers = await signed_in(web.client)
    path = f"/admin/api/documents/{DELIVERY}"
    missing = await web.client.put(path, json=NEW_DELIVERY, headers=ORIGIN)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "csrf_failed"
    wrong = await web.client.put(path, json=NEW_DELIVERY, headers={**headers, "x-csrf-token": "A" * 32})
    assert wrong.status_code == 403
    cross_site = await web.client.put(path, json=NEW_DELIVERY, headers={**headers, "origin": "https://evil.example"})
    assert cross_site.status_code == 403  # the CSRF middleware: a cookie request from another site
    form = await web.client.put(path, content=b"title=x", headers={**headers, "content-type": "text/plain"})
    assert form.status_code == 415
    document = await KnowledgeRepository(web.services.sessions).get(DELIVERY)
    assert document is not None
    assert document.text != NEW_DELIVERY["text"]
    assert (await web.client.put(path, json=NEW_DELIVERY, headers=headers)).status_code == 200


async def test_saving_removes_exactly_the_cached_answers_that_drew_on_the_document(web: Api) -> None:
    first = await ask(web, "How long does delivery take?")
    assert DELIVERY in [citation["id"] for citation in first["citations"]]
    assert (await ask(web, "How long does delivery take?"))["cache"] == "exact"
    await ask(web, "Which payment methods do you accept?")
    headers = await signed_in(web.client)
    stored = await KnowledgeRepository(web.services.sessions).get(DELIVERY)
    assert stored is not None
    saved = await web.client.put(f"/admin/api/documents/{DELIVERY}", json=NEW_DELIVERY, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json() == {"id": DELIVERY, "removed": 1, "created": False}
    again = await ask(web, "How long does delivery take?")
    assert again["cache"] == "miss"
    assert "Every order now arrives within 2 hours." in str(again["reply"])
    assert (await ask(web, "Which payment methods do you accept?"))["cache"] == "exact"  # did not use it: kept
    after = await KnowledgeRepository(web.services.sessions).get(DELIVERY)
    assert after is not None
    assert (after.text, after.source) == (NEW_DELIVERY["text"], "admin-dashboard")
    assert after.tags == stored.tags  # ingest tags the editor does not show are kept
    assert after.doc_metadata == {}  # the editor sent none: replaced, as the admin API does


async def test_an_faq_is_edited_as_its_question_and_answer(web: Api) -> None:
    headers = await signed_in(web.client)
    view = (await web.client.get("/admin/api/documents/faq-payment-methods")).json()
    assert view["kind"] == "faq"
    assert "answer" not in view["metadata"]  # derived from the text on saving: what is edited is what is said
    assert view["title"] == "Which payment methods do you accept?"
    body = {"kind": "faq", "title": view["title"], "text": "Only cash, in a paper bag.", "metadata": view["metadata"]}
    saved = await web.client.put("/admin/api/documents/faq-payment-methods", json=body, headers=headers)
    assert saved.status_code == 200, saved.text
    answer = await ask(web, "Which payment methods do you accept?")
    assert answer["reply"] == "Only cash, in a paper bag."
    assert [citation["id"] for citation in answer["citations"]] == ["faq-payment-methods"]


async def test_a_new_document_is_created_and_bad_input_is_refused(web: Api) -> None:
    headers = await signed_in(web.client)
    assert (await web.client.get("/admin/api/documents/faq-gift-wrap")).status_code == 404
    body = {"kind": "faq", "title": "Do you gift-wrap orders?", "text": "Yes, for 2 euros, in recycled paper."}
    created = await web.client.put("/admin/api/documents/faq-gift-wrap", json=body, headers=headers)
    assert created.json() == {"id": "faq-gift-wrap", "removed": 0, "created": True}
    view = (await web.client.get("/admin/api/documents/faq-gift-wrap")).json()
    assert (view["title"], view["text"], view["kind"], view["metadata"]) == (body["title"], body["text"], "faq", {})
    assert (await ask(web, "Do you gift-wrap orders?"))["reply"] == body["text"]
    for path, bad, code in [
        ("/admin/api/documents/bad%20id", body, "invalid_document_id"),
        ("/admin/api/documents/-leading-dash", body, "invalid_document_id"),
        ("/admin/api/documents/faq-x", {**body, "kind": "recipe"}, None),
        ("/admin/api/documents/faq-x", {**body, "title": ""}, None),
        ("/admin/api/documents/faq-x", {**body, "text": "x" * 50_001}, None),
        ("/admin/api/documents/faq-x", {**body, "metadata": {"n": 2**70}}, None),
    ]:
        refused = await web.client.put(path, json=bad, headers=headers)
        assert refused.status_code == 422, (path, refused.text)
        if code is not None:
            assert refused.json()["error"]["code"] == code
    assert (await web.client.get("/admin/api/documents/faq-x")).status_code == 404


@pytest.mark.parametrize(("q", "kind"), [("", ""), ("BANANA", ""), ("banana", "product"), ("%", ""), ("_", "faq")])
async def test_the_document_list_finds_by_id_title_or_text_in_any_case(web: Api, q: str, kind: str) -> None:
    await signed_in(web.client)
    found = (await web.client.get("/admin/api/documents", params={"q": q, "kind": kind})).json()
    assert [row["id"] for row in found["documents"]] == expected_ids(web, q, kind)
    assert found["truncated"] is False
    if q.isalpha():
        assert found["documents"]  # the sample store sells bananas
        assert {row["kind"] for row in found["documents"]} <= ({kind} if kind else {"faq", "policy", "product"})


async def test_the_document_list_is_limited_and_says_so(web: Api) -> None:
    await signed_in(web.client)
    page = (await web.client.get("/admin/api/documents", params={"limit": 3})).json()
    assert [row["id"] for row in page["documents"]] == expected_ids(web, "")[:3]
    assert page["truncated"] is True
    assert set(page["documents"][0]) == {"id", "kind", "title", "updated_at"}
    assert (await web.client.get("/admin/api/documents", params={"kind": "recipe"})).status_code == 422


async def test_markup_in_a_document_is_json_data_and_never_reaches_the_page(web: Api) -> None:
    headers = await signed_in(web.client)
    body = {"kind": "policy", "title": f"Sorbet {XSS}", "text": f"Dragonfruit sorbet {XSS} is in Frozen."}
    assert (await web.client.put("/admin/api/documents/policy-xss", json=body, headers=headers)).status_code == 200
    view = await web.client.get("/admin/api/documents/policy-xss")
    assert view.headers["content-type"].startswith("application/json")
    assert (view.json()["title"], view.json()["text"]) == (body["title"], body["text"])
    listed = (await web.client.get("/admin/api/documents", params={"q": "onerror"})).json()["documents"]
    assert [row["title"] for row in listed] == [body["title"]]
    assert "onerror" not in (await web.client.get("/admin")).text
    script = (await web.client.get("/static/admin.js")).text
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script


async def test_the_csrf_header_must_match_the_cookie_of_this_browser(web: Api) -> None:
    """A token from another browser's page does not fit this browser's cookie."""
    headers = await signed_in(web.client)
    transport = httpx.ASGITransport(app=web.app, client=("203.0.113.8", 5555))
    other = httpx.AsyncClient(transport=transport, base_url="http://helpline.test")
    async with other:
        other_headers = await signed_in(other)
        assert other_headers["x-csrf-token"] != headers["x-csrf-token"]
        crossed = await web.client.put(f"/admin/api/documents/{DELIVERY}", json=NEW_DELIVERY, headers=other_headers)
        assert crossed.status_code == 403
    assert auth.CSRF_COOKIE in web.client.cookies


@pytest.mark.parametrize(("q", "kind"), [("BaNaNa", ""), ("banana", "product"), ("%", ""), ("_", ""), ("", "policy")])
async def test_find_matches_in_any_case_and_escapes_wildcards_on_every_backend(api: Api, q: str, kind: str) -> None:
    rows = await KnowledgeRepository(api.services.sessions).find(q, kind, 10_000)
    assert sorted(row[0] for row in rows) == expected_ids(api, q, kind)  # the order of ids follows the collation
    if q in ("%", "_"):
        assert len(rows) < len(api.services.knowledge)  # a literal character, not a LIKE wildcard
    else:
        assert rows


async def test_deleting_from_the_dashboard_needs_the_csrf_token_and_removes_the_answers(web: Api) -> None:
    first = await ask(web, "How long does delivery take?")
    assert DELIVERY in [citation["id"] for citation in first["citations"]]
    await ask(web, "Which payment methods do you accept?")
    headers = await signed_in(web.client)
    path = f"/admin/api/documents/{DELIVERY}"
    missing = await web.client.delete(path, headers=ORIGIN)
    assert (missing.status_code, missing.json()["error"]["code"]) == (403, "csrf_failed")
    cross_site = await web.client.delete(path, headers={**headers, "origin": "https://evil.example"})
    assert cross_site.status_code == 403
    assert await KnowledgeRepository(web.services.sessions).get(DELIVERY) is not None  # nothing was deleted
    deleted = await web.client.delete(path, headers=headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": DELIVERY, "removed": 1}
    assert await KnowledgeRepository(web.services.sessions).get(DELIVERY) is None
    again = await ask(web, "How long does delivery take?")
    assert again["cache"] == "miss"
    assert DELIVERY not in [citation["id"] for citation in again["citations"]]
    assert (await ask(web, "Which payment methods do you accept?"))["cache"] == "exact"
    gone = await web.client.delete(path, headers=headers)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "document_not_found")
