"""Replies that answer nothing are handoffs (never cached, counted as such); answers, including a "no", are not."""

from __future__ import annotations

import pytest

from helpline.chat.reply import ControlLineFilter, looks_like_handoff

NON_ANSWERS = [
    "Sorry, I could not find any information about that.",
    # Found cached as answers by a review (session 18).
    "Unfortunately, we don't have any information about that.",
    "I'm sorry, but I can't help with that.",
    "Apologies, that isn't something I can answer.",
    "Sorry, I don't have details on that.",
    "We're sorry, there is no information on this in our help pages.",
    "I apologise, but the passages do not cover this.",
    "Sorry, I'm not able to answer that.",
    "Sorry, that information isn't available.",
    "The passages don't say, sorry.",
    "I found no information about gift wrapping.",
    "We are not able to help with that question here.",
    "I'm not sure. A member of our support team will get back to you.",
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
]


@pytest.mark.parametrize("reply", NON_ANSWERS)
def test_a_reply_that_answers_nothing_is_a_handoff(reply: str) -> None:
    assert looks_like_handoff(reply)


@pytest.mark.parametrize("reply", ANSWERS)
def test_an_answer_is_not_a_handoff(reply: str) -> None:
    assert not looks_like_handoff(reply)


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
