"""The widget and the dashboard in real headless Chromium (Debian's, driven by Python playwright) against a real
server process. One server and one browser for the module; a fresh browser context (a new shopper) per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

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
TIMEOUT_MS = 15_000
XSS_PAYLOADS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "HELPLINE_PROVIDERS": "extractive",
        "HELPLINE_ADMIN_TOKEN": ADMIN_TOKEN,
        "HELPLINE_RATE_LIMIT_IP": "1000/minute",
        "HELPLINE_RATE_LIMIT_SESSION": "1000/minute",
        "HELPLINE_RATE_LIMIT_USER": "1000/minute",
    }
    with serving(tmp_path_factory.mktemp("browser"), env) as (base, _process):
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
    DOCS.mkdir(exist_ok=True)
    phone.screenshot(path=str(DOCS / "widget.png"))
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


def test_the_dashboard_shows_the_traffic_under_the_strict_csp(browser: Browser, base_url: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, base_url=base_url)
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda message: blocked.append(message.text) if "Content Security" in message.text else None)
        sign_in(page)
        assert int(page.locator("body").get_attribute("data-requests") or "0") > 0
        expect(page.locator("#chart-requests .bar-rect")).not_to_have_count(0)
        expect(page.locator("#conversations tbody tr")).not_to_have_count(0)
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        assert blocked == []
    finally:
        context.close()


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
    finally:
        context.close()
