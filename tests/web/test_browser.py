"""The widget and the dashboard in real headless Chromium (Debian's, driven by Python playwright) against a real
server process. One server and one browser for the module; a fresh browser context (a new shopper) per test."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, ViewportSize, expect, sync_playwright

from tests.test_serve import serving

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
AXE = ROOT / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"
ADMIN_TOKEN = "browser-test-admin-token-0123456789"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PHONE = ViewportSize(width=375, height=740)
DESKTOP = ViewportSize(width=1280, height=1100)
EXPORT_QUESTIONS = ["How long does delivery take?", "Do you have bananas?", '<img src=x onerror="window.__xss=1">']
TIMEOUT_MS = 15_000
XSS_PAYLOADS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>"]


def screenshot(name: str) -> Path:
    """Where a screenshot goes: docs/ when refreshing the README's pictures (``HELPLINE_SCREENSHOTS=1``), else a
    scratch directory, so a test run leaves the working tree as it found it."""
    folder = DOCS if os.environ.get("HELPLINE_SCREENSHOTS") == "1" else Path(tempfile.gettempdir()) / "helpline-shots"
    folder.mkdir(exist_ok=True)
    return folder / name


SERVER_ENV = {
    "HELPLINE_ADMIN_TOKEN": ADMIN_TOKEN,
    "HELPLINE_RATE_LIMIT_IP": "1000/minute",
    "HELPLINE_RATE_LIMIT_SESSION": "1000/minute",
    "HELPLINE_RATE_LIMIT_USER": "1000/minute",
}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose Ollama is down (nothing listens on the discard port): every answer is a real failover to the
    extractive answerer, whose answers are cached (CACHE_FALLBACK_ANSWERS) as with a one-provider chain."""
    env = {
        **SERVER_ENV,
        "HELPLINE_PROVIDERS": "ollama,extractive",
        "HELPLINE_OLLAMA_HOST": "http://127.0.0.1:9",
        "HELPLINE_CACHE_FALLBACK_ANSWERS": "true",
    }
    with serving(tmp_path_factory.mktemp("browser"), env) as (base, _process):
        yield base


@pytest.fixture(scope="module")
def empty_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own whose conversations are only those one test makes (for the export)."""
    env = {**SERVER_ENV, "HELPLINE_PROVIDERS": "extractive"}
    with serving(tmp_path_factory.mktemp("export"), env) as (base, _process):
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@pytest.fixture
def phone(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, base_url=base_url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security" in message.text else None)
    yield page
    context.close()
    assert blocked == []  # the widget and the store page work under the strict CSP


def open_widget(page: Page) -> None:
    page.goto("/")
    page.get_by_role("button", name="Chat with us").click()
    expect(page.get_by_label("Your question")).to_be_focused()


def ask(page: Page, text: str) -> None:
    """Types a question, sends it with Enter, and waits for the reply to finish (or fail)."""
    before = page.locator(".hlw-bot[data-message-id], .hlw-failed").count()
    page.get_by_label("Your question").fill(text)
    page.keyboard.press("Enter")
    expect(page.locator(".hlw-bot[data-message-id], .hlw-failed")).to_have_count(before + 1)


def export_rows(base_url: str) -> list[dict[str, object]]:
    response = httpx.get(
        f"{base_url}/v1/admin/conversations?format=jsonl", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_shopper_sees_the_answer_with_a_citation_and_leaves_a_thumbs_down(phone: Page, base_url: str) -> None:
    open_widget(phone)
    ask(phone, "How long does delivery take?")
    reply = phone.locator(".hlw-bot[data-message-id]").last
    expect(reply.locator(".hlw-cite")).not_to_have_count(0)
    expect(reply.locator(".hlw-text")).not_to_be_empty()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
    phone.screenshot(path=str(screenshot("widget.png")))
    reply.get_by_role("button", name="Not helpful").click()
    reply.get_by_label("Tell us more (optional)").fill("Too vague about Sundays")
    reply.get_by_role("button", name="Send comment").click()
    expect(reply.get_by_role("status")).to_have_text("Thanks for your feedback.")
    message_id = reply.get_attribute("data-message-id")
    row = next(row for row in export_rows(base_url) if row["message_id"] == message_id)
    assert (row["feedback_rating"], row["feedback_comment"]) == ("down", "Too vague about Sundays")
    phone.keyboard.press("Escape")
    expect(phone.locator("#hlw-panel")).to_be_hidden()
    expect(phone.get_by_role("button", name="Chat with us")).to_be_focused()


def test_a_question_the_store_cannot_answer_shows_the_person_path(phone: Page) -> None:
    open_widget(phone)
    ask(phone, "what is the airspeed of a swallow")
    person = phone.locator(".hlw-handoff").last
    expect(person.get_by_role("link", name="Talk to a person")).to_have_attribute("href", f"{phone.url}#contact")


def test_markup_typed_by_a_shopper_renders_as_text(phone: Page) -> None:
    open_widget(phone)
    for payload in XSS_PAYLOADS:
        ask(phone, payload)
        expect(phone.locator(".hlw-user .hlw-text").last).to_have_text(payload)
    assert phone.evaluate("window.__xss") is None
    assert phone.locator(".hlw-log img, .hlw-log script").count() == 0


def test_markup_in_a_knowledge_document_renders_as_text(phone: Page, base_url: str) -> None:
    """A poisoned document (a product description with markup) reaches the shopper as text, never as markup."""
    payload = " ".join(XSS_PAYLOADS)
    response = httpx.put(
        f"{base_url}/v1/admin/kb/documents/faq-xss-probe",
        json={"title": "Do you sell dragonfruit sorbet?", "text": f"Yes, dragonfruit sorbet {payload} is in Frozen.",
              "kind": "faq"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    open_widget(phone)
    ask(phone, "Do you sell dragonfruit sorbet?")
    reply = phone.locator(".hlw-bot[data-message-id]").last
    expect(reply).to_contain_text("<img src=x onerror=")
    expect(reply).to_contain_text("<script>window.__xss=1</script>")
    assert phone.evaluate("window.__xss") is None
    assert phone.locator(".hlw-log img, .hlw-log script").count() == 0


def test_the_conversation_survives_a_reload_but_never_reaches_another_shopper(
    browser: Browser, phone: Page, base_url: str
) -> None:
    open_widget(phone)
    ask(phone, "Do you have bananas?")
    phone.reload()
    phone.get_by_role("button", name="Chat with us").click()
    expect(phone.locator(".hlw-user .hlw-text").first).to_have_text("Do you have bananas?")
    other = browser.new_context(viewport=PHONE, base_url=base_url)
    try:
        stranger = other.new_page()
        stranger.set_default_timeout(TIMEOUT_MS)
        open_widget(stranger)
        stranger.wait_for_load_state("networkidle")
        expect(stranger.locator(".hlw-user")).to_have_count(0)
        assert stranger.evaluate("Object.keys(localStorage)") == []
    finally:
        other.close()


def run_axe(page: Page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}"
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def sign_in(page: Page) -> None:
    page.goto("/admin")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("body[data-ready='true']")).to_have_count(1)


@pytest.fixture
def admin(browser: Browser, base_url: str) -> Iterator[Page]:
    """An operator signed in to the dashboard (desktop size, downloads accepted), under the strict CSP."""
    yield from signed_in_page(browser, base_url)


@pytest.fixture
def empty_admin(browser: Browser, empty_base_url: str) -> Iterator[Page]:
    yield from signed_in_page(browser, empty_base_url)


def signed_in_page(browser: Browser, base: str) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=base, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda message: blocked.append(message.text) if "Content Security" in message.text else None)
        sign_in(page)
        yield page
    finally:
        context.close()
    assert blocked == []  # the dashboard works under the strict CSP


def chat(base: str, message: str) -> dict[str, Any]:
    response = httpx.post(f"{base}/v1/chat", json={"message": message}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def open_document(page: Page, document_id: str) -> None:
    """Finds a document by its id in the editor's list and opens it."""
    page.get_by_label("Find", exact=True).fill(document_id)
    page.get_by_role("button", name="Find documents").click()
    page.locator("#documents").get_by_role("button", name=document_id, exact=True).click()
    expect(page.get_by_role("heading", name=f"Edit {document_id}")).to_be_focused()


def test_the_dashboard_shows_the_traffic_and_the_failovers_under_the_strict_csp(admin: Page, base_url: str) -> None:
    chat(base_url, "Do you deliver on Sundays?")  # Ollama is down: the extractive answerer fails in
    admin.reload()
    expect(admin.locator("body[data-ready='true']")).to_have_count(1)
    assert int(admin.locator("body").get_attribute("data-requests") or "0") > 0
    expect(admin.locator("#chart-requests .bar-rect")).not_to_have_count(0)
    expect(admin.locator("#conversations tbody tr")).not_to_have_count(0)
    failover_chart = admin.get_by_role("region", name="Failover events per hour")
    expect(failover_chart.get_by_role("heading", level=2)).to_have_text("Failover events per hour")
    bars = failover_chart.locator(".failover-rect")
    expect(bars).not_to_have_count(0)
    heights = [float(bars.nth(i).get_attribute("height") or "0") for i in range(bars.count())]
    assert max(heights) > 0
    expect(failover_chart.locator(".note")).to_contain_text("other than ollama, the first of the chain")
    stats = admin.evaluate("fetch('/admin/api/stats').then((response) => response.json())")
    assert stats["failovers"]["primary"] == "ollama"
    assert stats["failovers"]["total"] == stats["cache"]["counts"]["miss"] > 0  # every miss fell over
    expect(admin.locator(".tile", has_text="Failover events (24 h)").locator("dd")).to_have_text(
        str(stats["failovers"]["total"])
    )
    open_document(admin, "policy-delivery.delivery-times")
    admin.screenshot(path=str(screenshot("dashboard.png")), full_page=True)


def test_an_operator_edits_a_document_and_exactly_its_cached_answers_go(admin: Page, base_url: str) -> None:
    question = "How do I change the email address on my account?"
    first, second = chat(base_url, question), chat(base_url, question)
    assert (first["cache"], second["cache"]) == ("miss", "exact")
    cited = first["citations"][0]["id"]
    assert cited == "faq-change-email"
    open_document(admin, cited)
    text = admin.get_by_label("Text", exact=True)
    expect(text).to_have_value(first["reply"])  # an FAQ is answered with its text
    new_text = "Email addresses are now changed in the app only, under Account > Email, confirmed by a texted code."
    text.fill(new_text)
    admin.get_by_role("button", name="Save and invalidate cached answers").click()
    status = admin.get_by_role("status").filter(has_text="cached answer")
    expect(status).to_have_text(
        re.compile(rf"^Saved {re.escape(cited)}: removed \d+ cached answers? that drew on it\.$")
    )
    removed = re.search(r"removed (\d+)", status.inner_text())
    assert removed is not None
    assert int(removed.group(1)) >= 1
    third = chat(base_url, question)
    assert third["cache"] == "miss"
    assert third["reply"] == new_text
    assert third["citations"][0]["id"] == cited
    admin.get_by_role("button", name="Close").click()
    expect(admin.locator("#documents").get_by_role("button", name=cited, exact=True)).to_be_focused()


def test_an_operator_creates_a_document_the_bot_then_answers_from(admin: Page, base_url: str) -> None:
    admin.get_by_role("button", name="New document").click()
    expect(admin.get_by_label("Id", exact=True)).to_be_focused()
    admin.get_by_label("Id", exact=True).fill("faq-gift-wrap")
    admin.get_by_label("Title", exact=True).fill("Do you gift-wrap orders?")
    admin.get_by_label("Text", exact=True).fill("Yes: tick Gift wrap at checkout; it costs 2 euros.")
    admin.get_by_role("button", name="Save and invalidate cached answers").click()
    expect(admin.get_by_role("status").filter(has_text="faq-gift-wrap")).to_have_text(
        "Created faq-gift-wrap: removed 0 cached answers that drew on it."
    )
    expect(admin.locator("#documents").get_by_role("button", name="faq-gift-wrap", exact=True)).to_have_count(1)
    answer = chat(base_url, "Do you gift-wrap orders?")
    assert (answer["reply"], answer["citations"][0]["id"]) == ("Yes: tick Gift wrap at checkout; it costs 2 euros.",
                                                               "faq-gift-wrap")  # fmt: skip
    admin.get_by_label("Metadata (JSON object)").fill("[1, 2]")
    admin.get_by_role("button", name="Save and invalidate cached answers").click()
    expect(admin.get_by_role("status").filter(has_text="Not saved")).to_contain_text("must be a JSON object")
    expect(admin.get_by_label("Metadata (JSON object)")).to_be_focused()


def test_an_operator_deletes_a_discontinued_product_and_its_cached_answers_go(admin: Page, base_url: str) -> None:
    product = {"kind": "product", "title": "Yuzu sparkling water",
               "text": "Sparkling water with Japanese yuzu juice, 330 ml can, EUR 1.80."}  # fmt: skip
    response = httpx.put(f"{base_url}/v1/admin/kb/documents/prod-yuzu", json=product,
                         headers={"authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    assert response.status_code == 200, response.text
    question = "Do you sell yuzu sparkling water?"
    first, second = chat(base_url, question), chat(base_url, question)
    assert "prod-yuzu" in [citation["id"] for citation in first["citations"]]
    assert second["cache"] == "exact"
    open_document(admin, "prod-yuzu")
    dialogs: list[str] = []

    def confirm(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    admin.once("dialog", confirm)
    admin.get_by_role("button", name="Delete document").click()
    expect(admin.get_by_role("status").filter(has_text="prod-yuzu")).to_have_text(
        "Deleted prod-yuzu: removed 1 cached answer that drew on it."
    )
    assert dialogs == ["Delete prod-yuzu? The bot stops using it and every cached answer that drew on it goes."]
    expect(admin.locator("#doc-editor")).to_be_hidden()
    expect(admin.locator("#documents").get_by_role("button", name="prod-yuzu", exact=True)).to_have_count(0)
    third = chat(base_url, question)
    assert third["cache"] == "miss"
    assert "prod-yuzu" not in [citation["id"] for citation in third["citations"]]
    admin.get_by_role("button", name="New document").click()
    expect(admin.get_by_role("button", name="Delete document")).to_be_hidden()  # nothing to delete yet


def test_markup_in_a_document_renders_as_text_in_the_editor(admin: Page, base_url: str) -> None:
    payload = " ".join(XSS_PAYLOADS)
    response = httpx.put(
        f"{base_url}/v1/admin/kb/documents/policy-xss-editor",
        json={"title": f"Sorbet {payload}", "text": f"Sorbet {payload} is in Frozen.", "kind": "policy"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    admin.get_by_label("Find", exact=True).fill("policy-xss-editor")
    admin.get_by_role("button", name="Find documents").click()
    # a list: exactly one row, retried until the search has replaced the full list
    expect(admin.locator("#documents tbody td.text")).to_have_text([f"Sorbet {payload}"])
    open_document(admin, "policy-xss-editor")
    expect(admin.get_by_label("Title", exact=True)).to_have_value(f"Sorbet {payload}")
    expect(admin.get_by_label("Text", exact=True)).to_have_value(f"Sorbet {payload} is in Frozen.")
    admin.get_by_role("button", name="Save and invalidate cached answers").click()
    expect(admin.get_by_role("status").filter(has_text="policy-xss-editor")).to_contain_text("Saved policy-xss-editor")
    assert admin.evaluate("window.__xss") is None
    assert admin.locator("main img, main script").count() == 0


def test_the_export_links_download_exactly_the_conversations_with_their_feedback(
    empty_admin: Page, empty_base_url: str, tmp_path: Path
) -> None:
    asked = [chat(empty_base_url, question) for question in EXPORT_QUESTIONS]
    followup = httpx.post(
        f"{empty_base_url}/v1/chat",
        json={"message": "And on Sundays?", "session_id": asked[0]["session_id"]},
        timeout=30,
    ).json()
    asked.append(followup)
    feedback = {asked[0]["message_id"]: ("up", "Clear, thanks"), asked[1]["message_id"]: ("down", "=HYPERLINK(1)")}
    for message_id, (rating, comment) in feedback.items():
        sent = httpx.post(
            f"{empty_base_url}/v1/feedback", json={"message_id": message_id, "rating": rating, "comment": comment}
        )
        assert sent.status_code == 200, sent.text
    empty_admin.reload()
    expect(empty_admin.locator("body[data-ready='true']")).to_have_count(1)
    files = {}
    for name in ("CSV", "JSONL"):
        with empty_admin.expect_download() as download_info:
            empty_admin.get_by_role("link", name=name, exact=True).click()
        download = download_info.value
        assert download.suggested_filename == f"helpline-conversations.{name.lower()}"
        files[name] = tmp_path / download.suggested_filename
        download.save_as(files[name])
    rows = [json.loads(line) for line in files["JSONL"].read_text(encoding="utf-8").splitlines()]
    table = list(csv.DictReader(io.StringIO(files["CSV"].read_text(encoding="utf-8"))))
    expected_ids = [answer["message_id"] for answer in asked]
    assert [row["message_id"] for row in rows] == expected_ids
    assert [row["message_id"] for row in table] == expected_ids
    assert [row["message"] for row in rows] == [*EXPORT_QUESTIONS, "And on Sundays?"]
    assert [row["message"] for row in table] == [*EXPORT_QUESTIONS, "And on Sundays?"]
    for row, answer in zip(rows, asked, strict=True):
        assert (row["reply"], row["session_id"], row["cache"]) == (
            answer["reply"],
            answer["session_id"],
            answer["cache"],
        )
        assert (row["feedback_rating"], row["feedback_comment"]) == feedback.get(answer["message_id"], (None, None))
    assert [(row["feedback_rating"], row["feedback_comment"]) for row in table] == [
        ("up", "Clear, thanks"), ("down", "'=HYPERLINK(1)"), ("", ""), ("", ""),
    ]  # fmt: skip
    history = httpx.get(f"{empty_base_url}/v1/sessions/{asked[0]['session_id']}/messages").json()["messages"]
    assert [message["message_id"] for message in history] == [asked[0]["message_id"], followup["message_id"]]
    assert rows == export_rows(empty_base_url)  # what the browser saved is what the API exports


def test_axe_finds_no_serious_violations_on_the_store_and_the_dashboard(browser: Browser, base_url: str) -> None:
    # Injecting axe is an inline script, which our CSP rightly refuses: this context alone bypasses the CSP.
    context = browser.new_context(base_url=base_url, bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto("/")
        page.get_by_role("button", name="Chat with us").click()
        assert run_axe(page) == []
        sign_in(page)
        assert run_axe(page) == []
        open_document(page, "policy-delivery.delivery-times")  # the editor open, with a save result shown
        page.get_by_role("button", name="Save and invalidate cached answers").click()
        expect(page.get_by_role("status").filter(has_text="cached answer")).to_contain_text("Saved")
        assert run_axe(page) == []
    finally:
        context.close()
