"""The public surface: security headers, CORS allow-list, CSRF on cookie requests, admin auth, stored input."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpline.api.security import normalise_origin, parse_origins, same_secret
from helpline.knowledge.embeddings import Embedder
from tests.security.conftest import small_api

QUESTION = {"message": "How long does delivery take?"}
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # tests.conftest.make_settings
SHOP = "https://shop.example"


async def test_every_response_carries_the_security_headers(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder, max_body_bytes=1024) as api:
        responses = [
            await api.client.get("/healthz"),
            await api.client.get("/no/such/page"),
            await api.client.post("/v1/chat", json=QUESTION),
            await api.client.post("/v1/chat", content=b"x" * 2048, headers={"content-type": "application/json"}),
        ]
        assert [response.status_code for response in responses] == [200, 404, 200, 413]
        for response in responses:
            csp = response.headers["content-security-policy"]
            script_src = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
            assert "'unsafe-inline'" not in script_src
            assert "'unsafe-eval'" not in script_src
            assert "frame-ancestors 'self'" in csp
            assert "object-src 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "same-origin"
            assert "strict-transport-security" not in response.headers  # only in production, behind TLS
        assert responses[2].headers["cache-control"] == "no-store"


async def test_allowed_store_origins_may_frame_us(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder, cors_origins=f"{SHOP}/, https://other.example:8443") as api:
        csp = (await api.client.get("/healthz")).headers["content-security-policy"]
        assert "frame-ancestors 'self' https://shop.example https://other.example:8443" in csp


async def test_the_api_docs_get_their_own_policy(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder) as api:
        docs = await api.client.get("/docs")
        assert docs.status_code == 200
        assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]


async def test_cors_answers_only_allowed_origins(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder, cors_origins=SHOP) as api:
        preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        allowed = await api.client.options("/v1/chat", headers={"origin": SHOP, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == SHOP
        assert "access-control-allow-credentials" not in allowed.headers
        refused = await api.client.options("/v1/chat", headers={"origin": "https://evil.example", **preflight})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        simple = await api.client.post("/v1/chat", json=QUESTION, headers={"origin": SHOP})
        assert simple.headers["access-control-allow-origin"] == SHOP
        exposed = simple.headers["access-control-expose-headers"].lower()
        for header in ("ratelimit-remaining", "ratelimit-reset", "retry-after", "x-request-id"):
            assert header in exposed
        other = await api.client.post("/v1/chat", json=QUESTION, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_no_cors_origins_means_no_cross_origin_access(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder) as api:
        response = await api.client.post("/v1/chat", json=QUESTION, headers={"origin": SHOP})
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": "https://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"referer": "https://evil.example/page"}, 403),
        ({}, 403),  # neither Origin nor Referer: cannot tell, so no
        ({"origin": "http://helpline.test"}, 200),  # same origin
        ({"referer": "http://helpline.test/admin"}, 200),
        ({"origin": SHOP}, 200),  # an allowed store
    ],
)
async def test_csrf_cookie_posts_must_come_from_an_allowed_origin(
    tmp_path: Path, embedder: Embedder, headers: dict[str, str], status: int
) -> None:
    async with small_api(tmp_path, embedder, cors_origins=SHOP) as api:
        response = await api.client.post("/v1/chat", json=QUESTION, headers={"cookie": "helpline_admin=abc", **headers})
        assert response.status_code == status, response.text
        if status == 403:
            assert response.json()["error"]["code"] == "csrf_failed"
            assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


async def test_csrf_leaves_cookie_less_and_safe_requests_alone(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder) as api:
        cross = {"origin": "https://evil.example"}
        assert (await api.client.post("/v1/chat", json=QUESTION, headers=cross)).status_code == 200
        assert (await api.client.get("/healthz", headers={**cross, "cookie": "a=b"})).status_code == 200


async def test_admin_endpoints_refuse_without_or_with_a_wrong_token(tmp_path: Path, embedder: Embedder) -> None:
    async with small_api(tmp_path, embedder) as api:
        user_key, _ = await api.services.api_keys.create("shopper")
        admin_key, _ = await api.services.api_keys.create("operator", is_admin=True)
        cases = {
            None: 401,
            "Bearer": 401,
            "Basic " + ADMIN_TOKEN: 401,
            "Bearer wrong-token": 401,
            "Bearer " + ADMIN_TOKEN[:-1]: 401,
            "Bearer " + ADMIN_TOKEN + "x": 401,
            "Bearer " + user_key: 403,
            "Bearer " + ADMIN_TOKEN: 200,
            "Bearer " + admin_key: 200,
        }
        for header, status in cases.items():
            response = await api.client.get("/v1/admin/stats", headers={"authorization": header} if header else {})
            assert response.status_code == status, (header, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["code"] in {"unauthorized", "invalid_admin_token"}
        await api.client.post("/v1/chat", json=QUESTION)
        stats = (await api.client.get("/v1/admin/stats", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).json()
        assert stats["conversations"] == 1
        assert stats["sessions"] == 1
        assert stats["rate_limit"]["backend"] == "memory"


@pytest.mark.parametrize(
    "payload",
    [
        "'; DROP TABLE conversations; --",
        '" OR 1=1 --',
        "Robert'); DELETE FROM api_keys WHERE ('1'='1",
        "%' UNION SELECT key_hash FROM api_keys --",
    ],
)
async def test_sql_injection_strings_are_stored_verbatim(tmp_path: Path, embedder: Embedder, payload: str) -> None:
    async with small_api(tmp_path, embedder) as api:
        answered = await api.client.post("/v1/chat", json={"message": payload})
        assert answered.status_code == 200
        session_id = answered.json()["session_id"]
        stored = (await api.client.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
        assert [message["message"] for message in stored] == [payload]
        assert await api.count_rows() == (1, 1)


def test_secret_comparison() -> None:
    assert same_secret("abc", "abc")
    assert not same_secret("abc", "abd")
    assert not same_secret("", "abc")


def test_origin_parsing() -> None:
    assert parse_origins(" https://Shop.example/ ,http://localhost:8000, https://shop.example:443") == (
        "https://shop.example",
        "http://localhost:8000",
    )
    assert normalise_origin("null") is None
    assert normalise_origin("https://shop.example/path") is None
    for bad in ("*", "shop.example", "ftp://shop.example", "https://shop.example/widget"):
        with pytest.raises(ValueError, match="CORS_ORIGINS"):
            parse_origins(bad)
