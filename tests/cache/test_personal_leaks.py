"""Personal answers and personal details must not reach other owners through the shared cache (found by a review,
session 7: each test failed on the code before it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpline.cache.policy import unknown_details
from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from tests.api.test_streaming import parse_sse
from tests.cache.test_cache_api import ADMIN, UNLIMITED, ask
from tests.cache.test_policy import FOUND_BY_REVIEW, GUARD_BLIND_INTRODUCTIONS
from tests.conftest import Api, make_settings, running_api


@pytest.fixture
async def cached(sqlite_url: str, embedder: Embedder) -> AsyncIterator[tuple[Api, FakeProvider]]:
    fake = FakeProvider(name="gemini", model="gemini-test")
    async with running_api(make_settings(sqlite_url, **UNLIMITED), embedder, [fake, ExtractiveProvider(0.5)]) as api:
        yield api, fake


@pytest.mark.parametrize("question", FOUND_BY_REVIEW)
async def test_a_personal_question_is_not_answered_with_another_owners_answer(
    cached: tuple[Api, FakeProvider], question: str
) -> None:
    """The policy: a question whose correct answer needs the asker's own data is cached only for its owner."""
    api, fake = cached
    alice, _ = await api.services.api_keys.create("alice")
    bob, _ = await api.services.api_keys.create("bob")
    fake.replies = [FakeReply(text="Alice: that is about order GB-48213."), FakeReply(text="Bob's own answer.")]
    first = await ask(api, question, {"authorization": f"Bearer {alice}"})
    assert first["reply"] == "Alice: that is about order GB-48213."
    other = await ask(api, question, {"authorization": f"Bearer {bob}"})
    assert (other["cache"], other["reply"]) == ("miss", "Bob's own answer.")


async def test_a_shoppers_name_is_not_served_to_another_shopper(cached: tuple[Api, FakeProvider]) -> None:
    """A shopper introduces herself; the question is not personal, her name is not redacted, the model greets her by
    name, and that answer goes to the shared scope, where another shopper's plain question hits it semantically."""
    api, fake = cached
    fake.replies = [FakeReply(text="Hi Jane! Standard delivery takes one to two working days.")]
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    jane = await ask(api, "Hi, I'm Jane Doe. How long does delivery take?")
    assert jane["cache"] == "miss"
    other = await ask(api, "How long does delivery take?")
    assert "Jane" not in str(other["reply"]), (other["cache"], other["reply"])


@pytest.mark.parametrize(("introduction", "greeting", "name"), GUARD_BLIND_INTRODUCTIONS)
async def test_a_reply_greeting_a_shopper_by_a_name_the_question_rules_missed_is_not_shared(
    cached: tuple[Api, FakeProvider], introduction: str, greeting: str, name: str
) -> None:
    """The question rules read "This is Jane", not "thanks, may"; and the semantic guard, which keeps "this is jane,
    how long…" from answering "how long…", gives may and will no meaning, lets a sign-off of three words through
    and reads no word outside a-z. The answer that greets the shopper by name is not cached for everyone (the reply
    check), so another shopper's plain question is answered afresh instead of with that greeting."""
    api, fake = cached
    fake.replies = [FakeReply(text=greeting)]
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    shopper = await ask(api, introduction)
    assert (shopper["cache"], shopper["reply"]) == ("miss", greeting)
    other = await ask(api, "How long does delivery take?")
    assert name.casefold() not in str(other["reply"]).casefold(), (name, other["cache"], other["reply"])
    again = await ask(api, "How long does delivery take?")
    assert again["cache"] == "exact"  # the plain answer is cached as usual


# A shopper's details no rule reads (no digit, no @, no introduction), which the model repeats: (their question,
# the model's reply, another shopper's plain question). Each was served to the other shopper as a semantic hit
# (similarity 0.82-0.91; found by a review, session 22).
DETAILS_REPEATED = [
    ("How do I redeem my gift card at checkout? The code is GIFT-ABCD-EFGH-JKLM",
     "At checkout, choose Pay with gift card and enter GIFT-ABCD-EFGH-JKLM; the balance is taken off your total.",
     "How do I redeem my gift card at checkout?"),
    ("My son Oliver has a severe peanut allergy, is the chocolate birthday cake safe for him?",
     "As Oliver has a severe peanut allergy, please note the chocolate birthday cake is made in a kitchen that "
     "handles peanuts, so it is not safe for him.",
     "Is the chocolate birthday cake safe for someone with a peanut allergy?"),
    ("My toddler has a severe peanut allergy, is the chocolate birthday cake safe?",  # the catalogue has "toddler"
     "As your toddler has a severe peanut allergy, please note the cake is not safe for them.",
     "Is the chocolate birthday cake safe for someone with a peanut allergy?"),
    ("I'm vegan and coeliac, which of your breads can I eat?",  # words the store's passages use, said of the asker
     "As you're vegan and coeliac, try our gluten-free seeded loaf.",
     "Which of your breads are gluten free?"),
    ("I'm diabetic and on insulin, which of your desserts are sugar free?",
     "As you're diabetic and on insulin, our sugar-free desserts are the jelly pots and the rice pudding.",
     "Which of your desserts are sugar free?"),
    ("Can you send the invoice to jane dot doe at gmail dot com instead of my usual email?",
     "Yes, we can send the invoice to jane.doe@gmail.com instead of your usual email.",
     "Can you send the invoice to a different email instead of my usual email?"),
    ("Hi, we've just moved house and want to know whether you deliver groceries to Rosebank Farm, Mill Lane, "
     "Little Snoring on Saturday mornings?",
     "Yes, we deliver groceries to Rosebank Farm, Mill Lane, Little Snoring on Saturday mornings, between 8am and "
     "noon.",
     "Hi, we've just moved house, do you deliver groceries on Saturday mornings?"),
    ("Can I add a gift message to the hamper saying Happy birthday Margaret, love from Tom and Lucy?",
     "Yes! We'll print 'Happy birthday Margaret, love from Tom and Lucy' on a card inside the hamper.",
     "Can I add a gift message to the hamper?"),
]  # fmt: skip


@pytest.mark.parametrize(("question", "reply", "plain"), DETAILS_REPEATED)
@pytest.mark.parametrize("stream", [False, True])
async def test_details_a_reply_repeats_from_a_shoppers_question_are_not_served_to_another(
    cached: tuple[Api, FakeProvider], question: str, reply: str, plain: str, stream: bool
) -> None:
    """The shopper's question is not personal to the rules, and it is cached for everyone; the model's reply
    repeats words of it the store's knowledge does not use. Another shopper's plain question, close enough to hit
    it semantically, lacks those words: it is answered afresh, not with the first shopper's details."""
    api, fake = cached
    fake.replies = [FakeReply(text=reply)]
    fake.default = FakeReply(text="Another shopper's own answer.")
    first = await ask(api, question)
    assert (first["cache"], first["reply"]) == ("miss", reply)
    if stream:
        events = parse_sse((await api.client.post("/v1/chat", json={"message": plain, "stream": True})).text)
        other = events[-1][1]
    else:
        other = await ask(api, plain)
    assert (other["cache"], other["reply"]) == ("miss", "Another shopper's own answer.")
    again = await ask(api, question)
    if unknown_details(reply, question):  # an address the question spelled otherwise: never cached for everyone
        assert (again["cache"], again["reply"]) != ("exact", reply)  # (test_a_reply_with_details_its_knowledge_…)
    else:
        assert again["cache"] == "exact"  # the first shopper's own question still hits its answer


async def test_a_reply_repeating_words_the_store_knows_still_serves_a_paraphrase(
    cached: tuple[Api, FakeProvider],
) -> None:
    """Repeating the question is what replies do: words the store's knowledge uses (edit, order) are no detail of
    the shopper's, nor one the paraphrase also has (placing, placed), and the paraphrase still hits."""
    api, fake = cached
    fake.default = FakeReply(text="Yes, you can edit your order after placing it, until it is packed.")
    assert (await ask(api, "Can I edit my order after placing it?"))["cache"] == "miss"
    paraphrase = await ask(api, "Is it possible to make changes to an order I've already placed?")
    assert (paraphrase["cache"], paraphrase["reply"]) == ("semantic", fake.default.text)


async def test_openai_compatible_history_is_redacted_before_the_provider(cached: tuple[Api, FakeProvider]) -> None:
    """/v1/chat masks personal data in the message and in the stored history before a provider sees it; the
    OpenAI-compatible route passes the client's earlier turns through as typed."""
    api, fake = cached
    messages = [
        {"role": "user", "content": "My email is jane.doe@example.com and my card is 4111 1111 1111 1111"},
        {"role": "assistant", "content": "Thanks, noted."},
        {"role": "user", "content": "How long does delivery take?"},
    ]
    response = await api.client.post("/v1/chat/completions", json={"model": "helpline", "messages": messages})
    assert response.status_code == 200, response.text
    sent = " ".join(turn.message for turn in fake.requests[-1].history)
    assert "jane.doe@example.com" not in sent, sent  # masked, as /v1/chat masks the message
    assert "4111" not in sent, sent


async def test_an_apology_is_not_cached(cached: tuple[Api, FakeProvider]) -> None:
    """'Only good answers ... not an apology': an apology the model tagged ACTION=answer with a source is cached
    and served to everyone (only 'not sure' / 'a member of our team will follow up' wording counts as a handoff)."""
    api, fake = cached
    fake.replies = [FakeReply(text="Sorry, I could not find any information about that.")]
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    await ask(api, "How long does delivery take?")
    again = await ask(api, "How long does delivery take?")
    assert again["cache"] == "miss", again["reply"]


@pytest.mark.parametrize(
    "reply",
    [
        "Hi! Your order GB-48213 for jane.doe@example.com arrives within two working days.",
        "Standard delivery takes two days; we will text you on 07700 900123.",
    ],
)
async def test_a_reply_with_details_its_knowledge_has_not_is_not_shared(
    cached: tuple[Api, FakeProvider], reply: str
) -> None:
    """A plain question, answered with an order number, an email or a phone number that no passage it drew on has
    (the model made it up, or it slipped past the masking): somebody's details, never served to everyone (review,
    session 26: the next shopper got it as an exact hit)."""
    api, fake = cached
    fake.replies = [FakeReply(text=reply)]
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    await ask(api, "How long does delivery take?")
    again = await ask(api, "How long does delivery take?")
    assert (again["cache"], again["reply"]) == ("miss", "Standard delivery takes one to two working days.")


async def test_a_reply_quoting_the_stores_own_numbers_is_shared(cached: tuple[Api, FakeProvider]) -> None:
    """Numbers the passages have (the store's phone line here) are the store's, not somebody's: cached."""
    api, fake = cached
    document = {"title": "Telephone support", "text": "Our support line is 0800 123 4567, open 8am to 8pm daily.",
                "kind": "policy"}  # fmt: skip
    response = await api.client.put("/v1/admin/kb/documents/policy-phone", json=document, headers=ADMIN)
    assert response.status_code == 200, response.text
    fake.default = FakeReply(text="Call our support line on 0800 123 4567, from 8am to 8pm.")
    question = "What is the telephone support line number?"
    first = await ask(api, question)
    assert "policy-phone" in [citation["id"] for citation in first["citations"]]  # type: ignore[attr-defined]
    assert (await ask(api, question))["cache"] == "exact"


async def test_a_key_that_does_not_name_its_shopper_never_shares_a_personal_answer(
    cached: tuple[Api, FakeProvider],
) -> None:
    """The same store backend forgets the ``user`` field (or never sends it): the OpenAI-compatible route cannot
    tell its shoppers apart, so a personal answer it gave one of them must not be served to the next (it was: the
    key was taken as one shopper). Each such personal question is answered for its request alone; generic answers
    stay shared."""
    api, fake = cached
    backend, _ = await api.services.api_keys.create("store-backend")
    headers = {"authorization": f"Bearer {backend}"}

    async def complete(question: str) -> dict[str, object]:
        body = {"model": "helpline", "messages": [{"role": "user", "content": question}]}
        response = await api.client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        helpline: dict[str, object] = response.json()["helpline"]
        return {**helpline, "reply": response.json()["choices"][0]["message"]["content"]}

    fake.replies = [FakeReply(text="Alice: that is about order GB-48213."), FakeReply(text="Bob's own answer.")]
    assert (await complete("What's my order number?"))["reply"] == "Alice: that is about order GB-48213."
    other = await complete("What's my order number?")
    assert (other["cache"], other["reply"]) == ("miss", "Bob's own answer.")
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    assert (await complete("How long does delivery take?"))["cache"] == "miss"
    assert (await complete("How long does delivery take?"))["cache"] == "exact"


async def test_a_key_serving_many_shoppers_keeps_each_shoppers_personal_answer_theirs(
    cached: tuple[Api, FakeProvider],
) -> None:
    """A store's backend calls the OpenAI-compatible route with one API key for all its shoppers and names each in
    the ``user`` field: a personal answer is that shopper's, not the key's. Generic answers stay shared."""
    api, fake = cached
    backend, _ = await api.services.api_keys.create("store-backend")
    headers = {"authorization": f"Bearer {backend}"}

    async def complete(question: str, user: str) -> dict[str, object]:
        body = {"model": "helpline", "user": user, "messages": [{"role": "user", "content": question}]}
        response = await api.client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        helpline: dict[str, object] = response.json()["helpline"]
        return {**helpline, "reply": response.json()["choices"][0]["message"]["content"]}

    fake.replies = [FakeReply(text="Alice: that is about order GB-48213."), FakeReply(text="Bob's own answer.")]
    assert (await complete("What's my order number?", "alice"))["reply"] == "Alice: that is about order GB-48213."
    assert (await complete("What's my order number?", "alice"))["cache"] == "exact"  # hers, again
    other = await complete("What's my order number?", "bob")
    assert (other["cache"], other["reply"]) == ("miss", "Bob's own answer.")
    fake.default = FakeReply(text="Standard delivery takes one to two working days.")
    assert (await complete("How long does delivery take?", "alice"))["cache"] == "miss"
    assert (await complete("How long does delivery take?", "bob"))["cache"] == "exact"
