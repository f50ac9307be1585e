"""The pages, the widget, the admin login and the export over plain HTTP (in-process, real app and database)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from helpline.knowledge.embeddings import Embedder
from helpline.web import auth
from tests.conftest import Api, make_settings, running_api

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ORIGIN = {"origin": "http://helpline.test"}
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


@pytest.fixture
async def web(sqlite_url: str, embedder: Embedder) -> AsyncIterator[Api]:
    async with running_api(make_settings(sqlite_url), embedder) as running:
        yield running


async def login(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    page = await client.get("/admin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return await client.post("/admin/login", data={"csrf": csrf.group(1), "token": token}, headers=ORIGIN)


def assert_hardened(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/admin"])
async def test_pages_are_served_with_a_strict_csp_and_no_inline_script(web: Api, path: str) -> None:
    response = await web.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert_hardened(response)
    assert INLINE_SCRIPT.search(response.text) is None
    assert " style=" not in response.text
    assert "<style" not in response.text


async def test_widget_and_static_files_have_their_content_types(web: Api) -> None:
    widget = await web.client.get("/widget.js")
    assert widget.status_code == 200
    assert widget.headers["content-type"].startswith("text/javascript")
    assert_hardened(widget)
    assert "innerHTML" not in widget.text
    assert "insertAdjacentHTML" not in widget.text
    css = await web.client.get("/static/widget.css")
    assert css.headers["content-type"].startswith("text/css")
    for bad in ("/static/..%2froutes.py", "/static/routes.py", "/static/missing.js"):
        assert (await web.client.get(bad)).status_code == 404


async def test_login_sets_a_strict_http_only_cookie_and_a_wrong_token_is_refused(web: Api) -> None:
    wrong = await login(web.client, "not-the-admin-token-000000000")
    assert wrong.status_code == 401
    assert auth.SESSION_COOKIE not in wrong.cookies
    assert (await web.client.get("/admin/api/stats")).status_code == 401
    right = await login(web.client)
    assert right.status_code == 303
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    dashboard = await web.client.get("/admin")
    assert 'id="conversations"' in dashboard.text
    assert (await web.client.get("/admin/api/stats")).status_code == 200


async def test_login_needs_the_csrf_token_and_our_origin(web: Api) -> None:
    await web.client.get("/admin")
    no_token = await web.client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=ORIGIN)
    assert no_token.status_code == 403
    cross_site = await web.client.post(
        "/admin/login", data={"csrf": "x" * 32, "token": ADMIN_TOKEN}, headers={"origin": "https://evil.example"}
    )
    assert cross_site.status_code == 403
    assert auth.SESSION_COOKIE not in web.client.cookies


def test_a_forged_or_expired_session_value_is_not_valid() -> None:
    key = b"k" * 32
    value = auth.make_session_value(key, now=1000.0)
    assert auth.session_is_valid(key, value, now=1001.0)
    assert not auth.session_is_valid(key, value, now=1000.0 + auth.SESSION_TTL_S + 1)
    assert not auth.session_is_valid(b"other" * 8, value, now=1001.0)
    assert not auth.session_is_valid(key, value[:-1] + ("0" if value[-1] != "0" else "1"), now=1001.0)


async def ask(api: Api, message: str) -> dict[str, object]:
    response = await api.client.post("/v1/chat", json={"message": message})
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def test_stats_and_conversation_browser_after_traffic(web: Api) -> None:
    await ask(web, "How long does delivery take?")
    await ask(web, "what is the airspeed of a swallow")
    await login(web.client)
    stats = (await web.client.get("/admin/api/stats")).json()
    assert stats["requests"] == 2
    assert stats["conversations"] == 2
    assert stats["series"][0]["requests"] == 2
    assert stats["series"][0]["p95_ms"] >= stats["series"][0]["p50_ms"]
    assert stats["handoff_rate"] == 0.5
    assert stats["providers"] == {"extractive": 1.0}
    assert stats["feedback"] == {"up": 0, "down": 0}
    found = (await web.client.get("/admin/api/conversations", params={"q": "delivery"})).json()["conversations"]
    assert [row["message"] for row in found] == ["How long does delivery take?"]
    handoffs = (await web.client.get("/admin/api/conversations", params={"action": "handoff"})).json()
    assert [row["message"] for row in handoffs["conversations"]] == ["what is the airspeed of a swallow"]
    wildcard = (await web.client.get("/admin/api/conversations", params={"q": "%"})).json()["conversations"]
    assert wildcard == []


async def test_export_streams_the_rows_as_csv_and_jsonl_with_the_bearer_token_or_the_cookie(web: Api) -> None:
    first = await ask(web, "How long does delivery take?")
    second = await ask(web, XSS)
    feedback = {"message_id": first["message_id"], "rating": "down", "comment": "=cmd|' /C calc'!A0"}
    assert (await web.client.post("/v1/feedback", json=feedback)).status_code == 200
    assert (await web.client.get("/v1/admin/conversations?format=csv")).status_code == 401
    bearer = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    jsonl = await web.client.get("/v1/admin/conversations?format=jsonl", headers=bearer)
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert jsonl.headers["content-disposition"] == 'attachment; filename="helpline-conversations.jsonl"'
    rows = [orjson.loads(line) for line in jsonl.text.splitlines()]
    assert [row["message_id"] for row in rows] == [first["message_id"], second["message_id"]]
    assert rows[0]["feedback_rating"] == "down"
    assert rows[1]["message"] == XSS
    await login(web.client)
    exported = await web.client.get("/v1/admin/conversations?format=csv")
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["message_id"] for row in table] == [first["message_id"], second["message_id"]]
    assert table[0]["feedback_comment"].startswith("'=")  # a spreadsheet formula is neutralised
    assert table[1]["message"] == XSS  # data, byte for byte; the CSV is an attachment, never rendered


async def test_an_xss_payload_is_never_markup_in_our_pages(web: Api) -> None:
    await ask(web, XSS)
    await login(web.client)
    for path in ("/", "/admin"):
        page = (await web.client.get(path)).text
        assert "onerror" not in page
        assert "window.__xss" not in page
    rows = (await web.client.get("/admin/api/conversations")).json()["conversations"]
    assert rows[0]["message"] == XSS  # JSON data, written into the table with textContent by admin.js
    assert "textContent" in (await web.client.get("/static/admin.js")).text
    assert "innerHTML" not in (await web.client.get("/static/admin.js")).text
