"""Replies that answer nothing are handoffs (never cached, counted as such); answers, including a "no", are not."""

from __future__ import annotations

import time

import pytest

from helpline.cache.policy import cacheable
from helpline.chat.reply import ControlLineFilter, ParsedReply, parse_reply
from helpline.knowledge.base import Passage

PASSAGE = Passage(id="faq-delivery", kind="faq", title="Delivery", text="Slots run Monday to Saturday.", score=0.9)

# Say nothing, whatever they cite.
HANDOFFS = [
    "Sorry, I could not find any information about that.",
    "I'm not sure. A member of our support team will get back to you.",
    "I don't know, sorry.",
    "I am unable to look that up.",
    "I'm sorry, but I can't help with that.",
    # Typographic apostrophes, as most models and phones write them (a review found these cached, session 26).
    "I\u2019m not sure about that, sorry.",
    "Sorry, I can\u2019t help with that.",
    "I don\u2019t have any information about that.",
]
# Found cached as answers by a review (session 18): they say there is nothing on the question.
HEDGES = [
    "Unfortunately, we don't have any information about that.",
    "Apologies, that isn't something I can answer.",
    "Sorry, I don't have details on that.",
    "We're sorry, there is no information on this in our help pages.",
    "I apologise, but the passages do not cover this.",
    "Sorry, I'm not able to answer that.",
    "Sorry, that information isn't available.",
    "The passages don't say, sorry.",
    "I found no information about gift wrapping.",
    "We are not able to help with that question here.",
    # More, from the next review (session 19).
    "Our delivery policy does not say whether drivers carry items upstairs.",
    "I don't have enough information to answer that.",
    "Sorry, our FAQ doesn't cover that.",
    "I'm afraid I can't say.",
    "The passages do not specify a time.",
    "No information is available about gift cards.",
    "I cannot provide details on that.",
    # More, from the review of session 26: curly apostrophes, looking things up, the shoppers' other languages.
    "Unfortunately, I can't check that for you.",
    "I'm not able to look that up.",
    "Lo siento, no tengo información sobre eso. Un miembro de nuestro equipo te contactará.",
    "Désolé, je ne sais pas. Un membre de notre équipe vous contactera.",
    "Es tut mir leid, dazu habe ich keine Informationen.",
    "Mi dispiace, non ho informazioni su questo.",
    "Desculpe, não tenho informações sobre isso.",
    "Sorry, dat weet ik niet. Ik kan u daar helaas niet helpen.",
]
# Real answers in the same words (found by the next review): an answer that cites a passage keeps its citations
# and stays an answer; it is only not cached.
CITED_HEDGES = [
    "Our drivers can't help with carrying items upstairs; they deliver to your front door.",
    "Sorry, we cannot help with custom cakes: our bakery sells the cakes listed in the catalogue.",
    "There's no information needed from you: the refund goes back to your card in 3 to 5 days.",
    "This information is not available offline: the app needs a connection to show your orders.",
    "We don't have details of your bank's times, but refunds leave us within one working day.",
]
ANSWERS = [
    "Sorry, we don't deliver on Sundays. Slots run Monday to Saturday, 7am to 10pm.",
    "Unfortunately matcha is not in our range.",
    "We can't deliver alcohol without an ID check: the driver will ask for one.",
    "Standard delivery takes one to two working days.",
    "Yes: you can change your slot until 11pm the day before.",
    "The information on allergens is on each product page, under Ingredients.",
    "You can't cancel an order after the cut-off, but you can refuse items at the door.",
    "There is no minimum order for Plus members; others spend at least EUR 40.",
    "Our documents are available in your account, under Orders > Invoices.",
    # Answers the second round of wordings took for hedges (a review, session 19).
    "Our warranty policy does not cover accidental damage, but you can add cover at checkout.",
    "Our catalogue doesn't include alcohol.",
    "We cannot provide details of your card over chat for security reasons.",
    "We can't say exactly when the driver arrives, but you get a one-hour window by SMS.",
    "Our sources don't include any Robusta: all our coffee is Arabica.",
    "The product pages don't state a best-before date; it is printed on the pack.",
    "Our policy does not mention marketplace sellers; they have their own returns.",
    "If you don't have enough information on the label, call us.",
    "No details are available until dispatch; you will get an email then.",
    "The documents don't include VAT; it is added at checkout.",
    # Answers in the other languages the hedges above are listed in.
    "Sí, entregamos de lunes a sábado, de 7 a 22 h.",
    "Non, la livraison standard prend deux jours ouvrés.",
    "Die Standardlieferung dauert ein bis zwei Werktage.",
    "No, non spediamo la domenica.",
    "Não, a entrega padrão demora dois dias úteis.",
    "Não há nenhuma taxa de entrega acima de 40 EUR.",
    "No hay ningún cargo por la entrega estándar.",
    "Il n'y a aucun frais de livraison au-dessus de 40 EUR.",
    # Answers the first wordings of those took for hedges (review helper-53).
    "Nous ne partageons aucune information avec des tiers.",
    "Wir geben keine Informationen an Dritte weiter.",
    "Für die Rücksendung sind keine Angaben nötig.",
    "We delen geen informatie met derden.",
    "Nee, we bezorgen niet op zondag.",
]


def parsed(text: str, *, cites: bool) -> ParsedReply:
    sources = PASSAGE.id if cites else ""
    return parse_reply(f"{text}\n<<ACTION=answer; SOURCES={sources}>>", (PASSAGE,))


def cached(reply: ParsedReply) -> bool:
    return cacheable(
        action=reply.action, grounded=reply.grounded, provider="gemini", error=None, last_resort=False,
        allow_fallback=False, hedged=reply.hedged,
    )  # fmt: skip


@pytest.mark.parametrize("cites", [False, True])
@pytest.mark.parametrize("reply", HANDOFFS)
def test_a_reply_that_defers_is_a_handoff_whatever_it_cites(reply: str, cites: bool) -> None:
    result = parsed(reply, cites=cites)
    assert (result.action, result.citations, cached(result)) == ("handoff", (), False)


@pytest.mark.parametrize("reply", HEDGES)
def test_a_reply_that_answers_nothing_and_cites_nothing_is_a_handoff(reply: str) -> None:
    result = parsed(reply, cites=False)
    assert (result.action, cached(result)) == ("handoff", False)


@pytest.mark.parametrize("reply", HEDGES + CITED_HEDGES)
def test_a_cited_answer_that_hedges_keeps_its_citations_and_is_never_cached(reply: str) -> None:
    result = parsed(reply, cites=True)
    assert (result.action, [c.id for c in result.citations], result.hedged) == ("answer", [PASSAGE.id], True)
    assert not cached(result)


@pytest.mark.parametrize("reply", ANSWERS)
def test_an_answer_is_an_answer_and_cached(reply: str) -> None:
    result = parsed(reply, cites=True)
    assert (result.action, result.hedged, cached(result)) == ("answer", False, True)
    assert parsed(reply, cites=False).action == "answer"  # not grounded (not cached), but not a handoff either


@pytest.mark.parametrize(
    "chunks",
    [
        ["Standard delivery", " takes two days.", "\n", "<<ACTION=answer; SOURCES=x>>"],
        ["Standard delivery takes two days.\n<", "<ACTION=answer; SOURCES=x>>"],
        ["Standard delivery takes two days. \n\n", "<<ACTION=answer;", " SOURCES=x>>\n"],
    ],
)
def test_a_stream_shows_the_reply_without_the_whitespace_before_its_control_line(chunks: list[str]) -> None:
    """What a shopper sees streamed is what a replay from the cache shows (the stripped reply)."""
    control = ControlLineFilter()
    shown = "".join(control.feed(chunk) for chunk in chunks)
    rest, line = control.finish()
    assert shown + rest == "Standard delivery takes two days."
    assert line.startswith("<<ACTION=answer")


def test_whitespace_inside_a_streamed_reply_is_kept() -> None:
    control = ControlLineFilter()
    shown = "".join(control.feed(chunk) for chunk in ["Line one.", "\n\n", "Line two ", "and more."])
    rest, line = control.finish()
    assert (shown + rest, line) == ("Line one.\n\nLine two and more.", "")


@pytest.mark.parametrize("reply", ["\u2026", "...", " \u200b ", "!?"])
def test_a_reply_without_a_word_is_never_an_answer_to_cache(reply: str) -> None:
    """A review (session 26) found "…" with a citation cached as the answer."""
    assert not cached(parsed(reply, cites=True))


def test_a_control_line_written_twice_is_neither_shown_nor_kept() -> None:
    """A small model repeats its line: the first was shown, and cached as part of the reply (review, session 26)."""
    raw = "Standard delivery takes two days.\n<<ACTION=answer; SOURCES=faq-delivery>>\n<<ACTION=answer; SOURCES=x>>"
    result = parse_reply(raw, (PASSAGE,))
    assert (result.text, [c.id for c in result.citations]) == ("Standard delivery takes two days.", [])
    result = parse_reply(raw.replace("SOURCES=x", "SOURCES=faq-delivery"), (PASSAGE,))
    assert (result.text, [c.id for c in result.citations], cached(result)) == (
        "Standard delivery takes two days.", ["faq-delivery"], True,
    )  # fmt: skip
    for size in range(1, 9):  # in pieces of every size: one may end on a lone "<" (review helper-53)
        control = ControlLineFilter()
        shown = "".join(control.feed(raw[start : start + size]) for start in range(0, len(raw), size))
        rest, line = control.finish()
        assert (shown + rest, line) == ("Standard delivery takes two days.", raw[raw.find("<<") :]), size


def test_marks_around_words_before_the_control_line_stay_in_the_reply() -> None:
    """Only control lines leave a reply: "<<Return item>>" is the reply's own (review helper-53)."""
    raw = "Open your order and press\n<<Return item>>\n<<ACTION=answer; SOURCES=faq-delivery>>"
    assert parse_reply(raw, (PASSAGE,)).text == "Open your order and press\n<<Return item>>"
    for size in (1, 2, 5, 80):
        control = ControlLineFilter()
        shown = "".join(control.feed(raw[start : start + size]) for start in range(0, len(raw), size))
        assert shown + control.finish()[0] == "Open your order and press\n<<Return item>>", size


def test_a_long_reply_of_marks_is_read_in_linear_time() -> None:
    raw = "<<a>>" * 40_000 + "\n<<ACTION=answer; SOURCES=faq-delivery>>"
    started = time.perf_counter()
    assert parse_reply(raw, (PASSAGE,)).text == "<<a>>" * 40_000
    assert time.perf_counter() - started < 0.5


def test_a_control_line_in_the_middle_of_a_reply_leaves_it() -> None:
    result = parsed("Two days.\n<<ACTION=answer; SOURCES=faq-delivery>>\nAnything else?", cites=True)
    assert result.text == "Two days.\n\nAnything else?"


def test_marks_that_are_not_a_control_line_are_shown_as_they_come() -> None:
    control = ControlLineFilter()
    assert control.feed("Press <<Back>> to return, ") == "Press <<Back>> to return,"
    assert control.finish() == (" ", "")
