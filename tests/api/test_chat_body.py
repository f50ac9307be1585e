"""How POST /v1/chat reads its body (deps.caller_and_body): encodings, a client that leaves mid-body, a chunked body
over the limit, and the schema it documents. Driven over raw ASGI where httpx cannot express the case."""

from __future__ import annotations

import asyncio
import codecs
from typing import Any

import orjson
import pytest
from starlette.types import Message

from helpline.api.schemas import ChatRequest
from tests.conftest import Api

QUESTION = {"message": "How long does delivery take?"}


async def post_raw(api: Api, chunks: list[bytes], *, disconnect: bool = False, length: bool = True) -> int:
    """Send the body in ``chunks`` (then a disconnect, if asked) straight to the app; the response status."""
    events: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1 or disconnect}
        for index, chunk in enumerate(chunks)
    ]
    if disconnect:
        events.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        if events:
            return events.pop(0)
        await asyncio.sleep(30)  # nothing more: a real server would wait for the client
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"host", b"helpline.test"), (b"content-type", b"application/json")]
    if length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat", "raw_path": b"/v1/chat", "query_string": b"", "root_path": "", "headers": headers,
        "client": ("203.0.113.9", 4000), "server": ("helpline.test", 80),
    }  # fmt: skip
    await asyncio.wait_for(api.app(scope, receive, send), timeout=20)
    status: int = sent[0]["status"]
    return status


async def test_a_utf8_byte_order_mark_is_accepted_as_json_loads_did(api: Api) -> None:
    body = codecs.BOM_UTF8 + orjson.dumps(QUESTION)
    response = await api.client.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["reply"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
async def test_utf16_and_utf32_bodies_parse_as_json_loads_did(api: Api, encoding: str) -> None:
    body = orjson.dumps(QUESTION).decode().encode(encoding)
    response = await api.client.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


async def test_bytes_that_are_no_text_are_invalid_json(api: Api) -> None:
    response = await api.client.post(
        "/v1/chat", content=b'{"message": "\xff\xfe\x00bad"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_a_client_that_leaves_mid_body_is_a_400_not_a_server_error(api: Api) -> None:
    before = await api.count_rows()
    assert await post_raw(api, [b'{"message": "How lo'], disconnect=True, length=False) == 400
    assert await api.count_rows() == before


async def test_a_chunked_body_over_the_limit_is_a_413(api: Api) -> None:
    chunk = b" " * 16 * 1024
    chunks = [b'{"message": "hi"', *[chunk] * 8, b"}"]  # 128 KiB of JSON whitespace, over the 64 KiB default
    assert await post_raw(api, chunks, length=False) == 413
    assert await post_raw(api, [orjson.dumps(QUESTION)], length=False) == 200  # the same path under the limit


async def test_the_body_schema_is_documented_as_the_chat_request_component(api: Api) -> None:
    document = api.app.openapi()
    body = document["paths"]["/v1/chat"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    component = document["components"]["schemas"]["ChatRequest"]
    assert component["required"] == ["message"]
    assert (
        set(component["properties"]) == set(ChatRequest.model_fields) == {"message", "session_id", "locale", "stream"}
    )
