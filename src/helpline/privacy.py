"""PII redaction: ``redact(text)`` replaces emails, phone numbers, payment cards, IBANs and street addresses with
``[email]``, ``[phone]``, ``[card]``, ``[iban]``, ``[address]`` before text reaches a provider, the cache or the logs.

Precision matters as much as recall here: a shopper's message is full of numbers the answer needs (order numbers,
prices, dates, quantities, SKUs like GB-10001, postcodes), and redacting those would break the answer. So every
detector checks more than a shape:

* cards: 13-19 digits that pass the Luhn check *and* start like a real card scheme (Visa, Mastercard, Amex, ...),
* IBANs: a known country's exact length *and* the ISO 7064 mod-97 check,
* phones: an international (+/00) or trunk (0...) prefix, a North American layout, or a nearby word such as
  "call" or "phone"; a nearer "order"/"tracking"/"invoice" wins, and dates never count,
* addresses (best effort): a house number, a street name and a street type (Street, Rd, Avenue...), with the
  town and postcode that follow; a postcode on its own is not personal enough to lose.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedactionResult:
    """The redacted text and the kinds found (sorted, unique), e.g. ``("card", "email")``."""

    text: str
    kinds: tuple[str, ...]

    @property
    def redacted(self) -> bool:
        return bool(self.kinds)


# ---- email ---------------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)

# ---- IBAN ----------------------------------------------------------------------------------------------------

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})")


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country's length, then mod 97 of the rearranged number is 1."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _iban_end(text: str, start: int, length: int) -> int | None:
    """Where an IBAN of ``length`` characters starting at ``start`` ends (single spaces allowed between), or None."""
    taken, index = 0, start
    while taken < length and index < len(text):
        char = text[index]
        if char.isascii() and char.isalnum():
            taken += 1
        elif not (char == " " and index > start and text[index - 1] != " "):
            return None
        index += 1
    if taken < length or (index < len(text) and text[index].isalnum()):
        return None
    return index


def _redact_ibans(text: str) -> tuple[str, bool]:
    pieces: list[str] = []
    cursor = 0
    for match in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(match.group(1).upper())
        if length is None or match.start() < cursor:
            continue
        end = _iban_end(text, match.start(), length)
        if end is None or not iban_valid(text[match.start() : end].replace(" ", "")):
            continue
        pieces += [text[cursor : match.start()], "[iban]"]
        cursor = end
    if not pieces:
        return text, False
    return "".join(pieces) + text[cursor:], True


# ---- payment cards -------------------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def card_scheme_known(digits: str) -> bool:
    """Starts like a card scheme's numbers (IIN ranges) with a length that scheme issues."""
    length, two, four = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return length in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return length == 16  # Mastercard
    if two in (34, 37):
        return length == 15  # American Express
    if digits[0] == "6" or two in (50, 56, 57, 58) or 3528 <= four <= 3589:
        return 16 <= length <= 19 or (two in (50, 56, 57, 58) and length >= 12)  # Discover, UnionPay, Maestro, JCB
    if two in (30, 36, 38, 39):
        return 14 <= length <= 19  # Diners Club
    return False


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"[ -]", "", match.group())
    return "[card]" if luhn_valid(digits) and card_scheme_known(digits) else None


# ---- phone numbers -------------------------------------------------------------------------------------------

_PHONE = re.compile(r"(?<![\w/.,:#+-])(?:\+|\(\+?)?\d[\d ().-]{5,22}\d(?![\w/:-]|[.,]\d)")
_DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_NANP = re.compile(r"^(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}$")
_CONTEXT = re.compile(
    r"(?P<neg>\b(?:order|invoice|tracking|reference|ref|sku|item|parcel|receipt|voucher|coupon|postcode|zip)\b"
    r"(?:\s*(?:no\.?|number|num|#|id|code))?)"
    r"|(?P<pos>\b(?:phone|tel|telephone|mobile|cell|call|ring|text|sms|whatsapp|number|contact|reach)\b)",
    re.IGNORECASE,
)
_CONTEXT_WINDOW = 40


def _context(text: str, start: int) -> str | None:
    """The nearest cue before a number: "pos" (call, phone...), "neg" (order, tracking...), or None."""
    last = None
    for match in _CONTEXT.finditer(text, max(0, start - _CONTEXT_WINDOW), start):
        last = match
    if last is None:
        return None
    return "neg" if last.group("neg") else "pos"


def _looks_like_phone(candidate: str, digits: int, cue: str | None) -> bool:
    if cue == "neg" or _DATE.match(candidate) or digits > 15:
        return False
    if candidate.startswith(("+", "(+", "00")):
        return digits >= 8
    if _NANP.match(candidate) or (candidate.startswith("0") and 10 <= digits <= 11):
        return True
    if candidate.startswith("(") and 9 <= digits <= 11:
        return True
    return cue == "pos" and digits >= 7


def _phone_replacer(text: str) -> Callable[[re.Match[str]], str | None]:
    def replace(match: re.Match[str]) -> str | None:
        candidate = match.group().rstrip(".- (")
        digits = sum(char.isdigit() for char in candidate)
        if not _looks_like_phone(candidate, digits, _context(text, match.start())):
            return None
        return "[phone]" + match.group()[len(candidate) :]

    return replace


# ---- street addresses ----------------------------------------------------------------------------------------

_STREET_TYPES_STRONG = (
    r"street|st|road|rd|avenue|ave|lane|ln|boulevard|blvd|crescent|terrace|gardens|mews|parkway|pkwy|highway|hwy"
    r"|strasse|straße|str|rue|calle|via|laan|straat|weg"
)
_STREET_TYPES_ALL = _STREET_TYPES_STRONG + r"|way|close|court|ct|place|pl|square|sq|hill|grove|row|walk|drive|dr"
_UNIT = r"(?:(?:flat|apt|apartment|unit|suite)\.?\s*\w{1,5},?\s+)?"
_NUMBER = r"\d{1,5}[A-Za-z]?(?:-\d{1,5})?,?\s+"
_TOWN_AND_CODE = (
    r"(?:,\s*(?-i:[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2}))?"
    r"(?:,?\s*(?:[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}|\d{5}(?:-\d{4})?|\d{4}\s?[A-Z]{2})\b)?"
)
_ADDRESS = re.compile(
    # A Title Case street name may end in any street type; a lower-case one (at most two words) only in an
    # unambiguous type, so "2 large boxes way too big" or "get 1 free on Oxford Street" stay as they are.
    rf"\b{_UNIT}{_NUMBER}(?:(?-i:(?:[A-Z][\w'-]*\s+){{1,4}})(?:{_STREET_TYPES_ALL})"
    rf"|(?-i:(?:[a-z][\w'-]*\s+){{1,2}})(?:{_STREET_TYPES_STRONG}))\b\.?{_TOWN_AND_CODE}",
    re.IGNORECASE,
)


# ---- all together --------------------------------------------------------------------------------------------


def _substitute(
    text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str | None]
) -> tuple[str, bool]:
    found = False

    def apply(match: re.Match[str]) -> str:
        nonlocal found
        replacement = replace(match)
        if replacement is None:
            return match.group()
        found = True
        return replacement

    return pattern.sub(apply, text), found


# Every detector above needs a digit (cards, IBANs, phones, house numbers) or an "@" (emails): text with neither
# has nothing to redact. Most questions and log fields are such text, and this test is a tenth of the full pass.
_MAY_HOLD_PII = re.compile(r"[\d@]")


def redact(text: str) -> RedactionResult:
    """``text`` with personal data replaced by ``[kind]`` markers, and which kinds were found."""
    if _MAY_HOLD_PII.search(text) is None:
        return RedactionResult(text, ())
    kinds: list[str] = []
    text, found = _substitute(text, _EMAIL, lambda _match: "[email]")
    kinds += ["email"] if found else []
    text, found = _redact_ibans(text)
    kinds += ["iban"] if found else []
    text, found = _substitute(text, _CARD, _card)
    kinds += ["card"] if found else []
    text, found = _substitute(text, _PHONE, _phone_replacer(text))
    kinds += ["phone"] if found else []
    text, found = _substitute(text, _ADDRESS, lambda _match: "[address]")
    kinds += ["address"] if found else []
    return RedactionResult(text, tuple(sorted(kinds)))
