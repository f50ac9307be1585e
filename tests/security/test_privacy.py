"""PII redaction: what must go (emails, phones, cards, IBANs, addresses) and what a support answer needs to keep."""

from __future__ import annotations

import pytest

from helpline.privacy import card_scheme_known, iban_valid, luhn_valid, redact


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("write to jane.doe+orders@example.co.uk please", "write to [email] please", ("email",)),
        ("JANE_DOE@Example.COM.", "[email].", ("email",)),
        ("mail me: a@b.io, c.d@e-f.org", "mail me: [email], [email]", ("email",)),
        ("call me on +44 20 7946 0958 tomorrow", "call me on [phone] tomorrow", ("phone",)),
        ("my mobile is 07700 900123.", "my mobile is [phone].", ("phone",)),
        ("ring 07700900123", "ring [phone]", ("phone",)),
        ("US: (415) 555-2671 after 5", "US: [phone] after 5", ("phone",)),
        ("reach me at 415-555-2671", "reach me at [phone]", ("phone",)),
        ("0049 30 901820 is my number", "[phone] is my number", ("phone",)),
        ("+33 1 42 68 53 00", "[phone]", ("phone",)),
        ("phone: 5551234", "phone: [phone]", ("phone",)),
        ("Tel. +49 (0)30 901820", "Tel. [phone]", ("phone",)),
        ("card 4111 1111 1111 1111 exp 12/27", "card [card] exp 12/27", ("card",)),
        ("5500-0000-0000-0004", "[card]", ("card",)),
        ("amex 378282246310005", "amex [card]", ("card",)),
        ("pay with 6011111111111117 ok", "pay with [card] ok", ("card",)),
        ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "IBAN [iban] thanks", ("iban",)),
        ("de89370400440532013000", "[iban]", ("iban",)),
        ("NL91ABNA0417164300.", "[iban].", ("iban",)),
        ("send it to 221B Baker Street, London NW1 6XE", "send it to [address]", ("address",)),
        ("I live at 12 acacia avenue", "I live at [address]", ("address",)),
        ("Flat 3, 45 Queen's Road, Bristol", "[address]", ("address",)),
        (
            "deliver to 1600 Pennsylvania Ave NW? no: 1600 Pennsylvania Ave",
            "deliver to [address] NW? no: [address]",
            ("address",),
        ),
        ("ship to 10 Downing St. today", "ship to [address] today", ("address",)),
        ("Hauptstraße? no, 5 Lindenallee Strasse 10115", "Hauptstraße? no, [address]", ("address",)),
        (
            "I'm jo@x.com, 07700 900123, card 4242424242424242, 7 Elm Grove",
            "I'm [email], [phone], card [card], [address]",
            ("address", "card", "email", "phone"),
        ),
    ],
)
def test_personal_data_is_replaced(text: str, expected: str, kinds: tuple[str, ...]) -> None:
    result = redact(text)
    assert result.text == expected
    assert result.kinds == kinds
    assert result.redacted


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order 100234567?",
        "order #20240512-7781 has not arrived",
        "my order number is 0012345678",
        "tracking number 00340434161094042557",
        "invoice no. 4000123456 is wrong",
        "It cost £12.99, or €1,299.00 for the big one",
        "price 1299.99 and 2 x 500g",
        "delivered on 2024-05-12 at 10:30",
        "on 12/05/2024 or 12.05.2024",
        "SKU GB-10001 and GB-10002",
        "product code 4006381333931",
        "my postcode is SW1A 1AA",
        "zip 90210",
        "1234 AB is a Dutch postcode",
        "I need 2 large boxes way too big",
        "items 12 13 14 15 16 17 are missing",
        "buy 3 and get 1 free, 25% off, 100 g per 1.50",
        "call us between 9 and 17",
        "the bananas (6 per pack) cost 1.99",
        "4111 1111 1111 1112 is not a valid card",
        "1234567890123456",
        "GB82 WEST 1234 5698 7654 33 is a wrong IBAN",
        "version 1.2.3.4 of the app",
        "I ordered 3 road bikes and 2 street lamps",
        "buy 2, get 1 free at our Oxford Street store",
        "send it to my email address please",
        "use the code SUMMER2024",
    ],
)
def test_what_a_support_answer_needs_is_kept(text: str) -> None:
    result = redact(text)
    assert result.text == text, result.text
    assert result.kinds == ()
    assert not result.redacted


def test_an_order_cue_nearer_than_a_phone_cue_wins_and_vice_versa() -> None:
    assert redact("call about order 0012345678").text == "call about order 0012345678"
    assert redact("order 12345, call me on 07700900123").text == "order 12345, call me on [phone]"


def test_checks() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert card_scheme_known("4111111111111111")
    assert not card_scheme_known("1234567890123452")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")
    assert not iban_valid("XX82WEST12345698765432")


def test_redaction_is_idempotent_and_keeps_unicode() -> None:
    text = "Grüße from jo@example.de — 07700 900123 ✓"
    once = redact(text)
    assert once.text == "Grüße from [email] — [phone] ✓"
    assert redact(once.text).text == once.text
