"""Which questions are personal: their answer depends on who asks, so it is cached only for its owner.

A personal question judged generic can serve one shopper's answer to another (a leak); a generic question judged
personal only costs hit rate. The rule the tables follow: if a correct answer needs that shopper's own data (their
order, parcel, payment, card, account, refund, return, contact details), it is personal; a how-to or policy question
stays shared even when it says "my". A hypothetical in the present tense ("what if my card is declined?") asks for the
policy; a report in the past or perfect tense ("my card was declined", "if my order hasn't arrived") is about the
asker's own state.

Messages marked [banking77] are verbatim from ../shared/datasets/banking77/train.csv.
"""

from __future__ import annotations

import time

import pytest

from helpline.cache.policy import echoes, is_personal, lacks_echoes, names_the_asker, unknown_details, word_forms

# Found by a review (session 7): each was cached as shared, so another API key got the first asker's answer.
FOUND_BY_REVIEW = [
    "What's my order number?",
    "What is my account balance?",
    "How many loyalty points do I have?",
    "What's the balance on my gift card?",
    "What did I order last week?",
    "Which items are in my order?",
    "When's my next delivery?",  # "When is my next delivery?" was personal; the contraction was not
    "What's my delivery date?",
    "Did I get refunded?",  # "Was I refunded?" / "Have I been refunded?" were personal
    "Please cancel the order I just placed",
    "The driver didn't deliver my groceries",
    "How much did I pay for my last order?",
]
PERSONAL = [
    *FOUND_BY_REVIEW,
    "Hi, I'm Jane Doe. How long does delivery take?",
    # Introductions the rules missed (a review, session 18): a reply greeting the shopper by name was shared.
    "This is Jane, how long does delivery take?",
    "Jane Doe here. How long does delivery take?",
    "Hello, Mary Jane Watson here! Quick question: how long does delivery take?",
    "I'm Jane. Do you deliver on Sundays?",
    "Hi I am Jane Doe, can I change my delivery slot?",
    "It\u2019s Priya again, do you sell oat milk?",
    "Hey, Tom here: is there a minimum order?",
    "my name's jane, what are your opening hours?",
    "Jane here",
    "Jane here again, do you sell oat milk?",
    "This is Urgent, Jane here. Do you deliver today?",
    # Names a stop-list word comes before, and names of other shapes (the same review).
    "Student Jane here: is there a discount?",
    "Nurse Jackie here. Do you deliver to hospitals?",
    "Member Tom Jones here - is there a minimum order?",
    "Jane McDonald here. Do you sell oat milk?",
    "Jane O'Brien here, do you sell oat milk?",
    "Anne-Marie here! Do you sell oat milk?",
    "Jane here? Do you sell oat milk?",
    "I'm April, and I'm Vegan: do you sell oat milk?",
    # Where is my order, in many phrasings, casings and typos.
    "where's my stuff",
    "hi, where's my stuff",
    "Where is my order?",
    "wheres my order",
    "WHERE IS MY PARCEL",
    "where\u2019s our delivery??",  # a typographic apostrophe
    "my parcel hasn't shown up",
    "My parcel still hasnt arrived",
    "I still haven't got my package",
    "i havent received my groceries",
    "We never received our order",
    "our order is late",
    "Our delivery didn't come today",
    "The driver never showed up",
    "the delivery hasnt arrived yet and it's 9pm",
    "Can you tell me where my delivery is right now?",
    "Hello, could you check on the status of my delivery please?",
    "what's the status of my order",
    "Can you check my order?",
    "can u check my order pls",
    "When will my order arrive?",
    "What time will my driver arrive?",
    "Is my order on its way?",
    "has my order shipped yet?",
    "Did my order go through?",
    "track my order",  # a request to do the tracking (contrast "How do I track my order?" below)
    # Charges and payments.
    "I was charged twice",
    "you charged me twice",
    "You've charged me twice for the same order",
    "ive been charged twice for one order",
    "Why was I charged a delivery fee?",
    "There are two Greenbasket payments on my card statement, why?",
    "why did my payment fail",
    "my card was declined",
    "My card keeps getting declined at checkout",
    "Why was my voucher not accepted?",
    # Wrong, broken or missing items.
    "I got the wrong item",
    "i recieved the wrong item",
    "I got someone else's item in my order",
    "the item I received is broken",
    "My eggs arrived cracked",
    "Some of the eggs in my delivery were broken",
    "Something in my order arrived damaged, what now?",
    "An item was missing from my bags",
    "half my shopping is missing",
    "I ordered the wrong size yesterday",
    "we ordered 2 bags of flour but only got 1",
    "i need to return the shoes i bought last week",
    # Refunds and returns.
    "I never received my refund",
    "i didnt get my refund",
    "WHERE IS MY REFUND",
    "Could you tell me what's happening with my refund?",
    "I want a refund for order 12345",
    "what's the status of my return",
    "did my return arrive",
    "Have you received the parcel I sent back?",
    "Refund me please, the milk was off",
    # Cancel or change my order.
    "cancel my order",
    "please cancel my order",
    "I want to cancel my order",
    "Can you cancel our order?",
    "change the address on my order",
    "I need to change the delivery address on my order",
    "Why was my order cancelled?",
    "My order got cancelled, why did that happen?",
    "Why did my delivery slot disappear?",
    "Why can't I cancel my order?",
    # Account access.
    "my account is locked",
    "Why is my account locked?",
    "I've been locked out of my account",
    "my account has been hacked",
    "I think someone hacked my account",
    "I can't log in to my account",
    "i cant log into my account",
    "Our account was suspended for no reason",
    # Identifiers and contact details.
    "Order #48213 hasn't arrived",
    "Where is my order #48213? It hasn't arrived",
    "order 123456",
    "my order number is GB-884512",
    "can you track 1Z999AA10123456784",
    "tracking says delivered but nothing here: 1Z999AA10123456784",
    "my email is jane.doe@example.com",
    "you can reach me on 07700 900123",
    "call me at +44 7700 900123",
    "my address is 12 Acacia Avenue",
    "my name is Jane Doe and I placed an order this morning",
    # [banking77] about the asker's own card, payment, transfer or refund.
    "I am still waiting on my card?",
    "Why haven't I gotten my new card?",
    "Where is the card I ordered 2 weeks ago?",
    "Is there a tracking number for the card you sent me?",
    "2 weeks ago I ordered my new card.  It isn't here.  What should I do?",
    "My payment was declined",
    "My card payment failed.",
    "You have declined my  payment.",
    "Why is my last transfer pending?",
    "Can you explain why my payment is still pending?",
    "I have a duplicate charge",
    "I received duplicate charges.",
    "I was charged more than once in a single transaction",
    "I didn't get the correct amount of money from the ATM machine",
    "The ATM took my card.",
    "I think someone has hacked my card!",
    "My refund isn't showing up",
    "Did I not get my refund? I don't see it.",
    "What happened to the transfer I did?",
    "My top-up was rejected",
    "The top up failed",
    "Could you explain why my card payment did not work?",
    "There's a card payment with a name I don't recognize",
    "I need my refund",
    "Still waiting on my refund...",
    "The refund I asked for isn't showing up",
    "I still don't have a refund.",
    "I did not do this payment",
    "Why am I being declined?",
    # More ways to say it, each found missing while writing the rules.
    "my order is wrong",
    "The milk in my order was off",
    "you forgot my bread",
    "you sent the wrong item",
    "they never delivered my order",
    "the driver left my shopping outside in the rain",
    "Items missing from my order",
    "I'm missing 3 items",
    "tracking says delivered but it's not here",
    "nothing has arrived yet",
    "still no sign of my parcel",
    "order not received",
    "Please refund my order, it never came",
    "Can I get a refund for my damaged eggs?",  # "can I" asks a policy, "my damaged eggs" says they are
    "can you see if my refund went through",
    "my payment went through twice",
    "I was promised a refund",
    "i've been waiting 3 weeks for my refund",
    # An unlabelled id is taken for an order (a product one costs only hit rate; see "SKU GB-10001" below).
    "What time is GB-55402 arriving?",
    "Has the payment for GB-58214 been refunded?",
]

GENERIC = [
    # The brief's own examples of shared how-to / policy questions.
    "how do I cancel an order?",
    "what is your return policy?",
    "can I change the delivery address after ordering?",
    "how long does delivery take?",
    "do you ship to Canada?",
    "how do I reset my password?",
    # Capitalised words that are no introduction.
    "This is urgent: how long does delivery take?",
    "Is this Greenbasket's own brand?",
    "It is possible to pay with PayPal?",
    "Delivery here is slow, how long does it take?",
    "I am vegan, which of your ready meals are plant based?",
    # Capitalised words a review found taken for names (session 19).
    "I'm Vegan, which of your ready meals are plant based?",
    "I'm German, do you ship to Germany?",
    "It's Friday: do you deliver on Saturdays?",
    "This is Urgent! Do you deliver today?",
    "Apple Pay here: is it accepted at checkout?",
    "Student here. Is there a student discount?",
    "It's Black Friday, are there any deals?",
    "Same here. Do you deliver on Sundays?",
    "Quick Question here: do you sell oat milk?",
    "I'm Confused, how do I change my delivery slot?",
    # Borderline, decided generic: the correct answer is the procedure (the tracking link in the dispatch email, or
    # Account > Orders) and needs nothing of the asker's; nothing of theirs is in the message either. A request to do
    # it ("track my order", "can you track 1Z...") is personal, see above. The same goes for "check the status".
    "How do I track my order?",
    "how can i track my delivery",
    "How do I check the status of my order?",
    # How-to questions that say "my" but ask for a general procedure.
    "How do I cancel my order?",
    "how do i cancel my order",
    "Can I edit my order after placing it?",
    "Can I change my delivery address?",
    "Is it possible to update the address my order goes to?",
    "How do I change my delivery slot?",
    "How do I update my card details?",
    "Where do I update the mobile number on my account?",
    "How do I delete my account?",
    "How do I change my password?",
    "How can I sign in to my account?",
    "Can I change the email on my account?",
    "How do I change my phone number?",
    "Where can I see my past orders?",
    "How do I view my order history?",
    "Where do I find my order number?",
    "How do I print my receipt?",
    "Can I get an invoice for my order?",
    "How do I redeem my loyalty points for a voucher?",
    "Can I use my loyalty points at checkout?",
    "Where do I enter my discount code at checkout?",
    "How do I cancel my Plus membership?",
    "Can I pause my Plus membership?",
    "Can I change my delivery instructions?",
    "How do I track my refund?",
    "Is there a way to follow my order's progress?",
    # Hypotheticals in the present tense: the answer is the policy.
    "What should I do if my item arrives damaged?",
    "What happens if my parcel is lost in the post?",
    "What should I do if my card is declined?",
    "What happens if my payment fails?",
    "What happens if I'm out when my delivery arrives?",
    "Will I be charged if I cancel my order?",
    "Can I return fresh produce if I'm not happy with it?",
    "What happens to my points if my membership is cancelled?",
    "How long does it take to process a refund once you get my return?",
    # Policy, delivery, payment and product questions.
    "How long do refunds take?",
    "How long does it take for a refund to show on my card?",
    "How do I get a refund for a damaged item?",
    "How do I report a missing item?",
    "What are the steps to cancel an order I placed?",
    "Is there a charge for cancelling an order?",
    "Is there a delivery charge?",
    "Do you deliver to my area?",
    "Do you deliver on Sundays?",
    "Can someone else receive my delivery for me?",
    "Can I tip my driver?",
    "How do I contact my driver?",
    "Will the driver carry my shopping upstairs?",
    "Is there a fee for the bags my shopping comes in?",
    "Can I get my groceries delivered to my office?",
    "Which ways can I pay for my shopping?",
    "Is my payment information secure?",
    "Is my data shared with third parties?",
    "How do you use my personal data?",
    "Do you have a mobile app for my phone?",
    "How do I know my order was placed?",
    "How do substitutions work when something I ordered has sold out?",
    "Where can I rate something I bought?",
    "do you take apple pay",
    "What payment methods do you accept?",
    "How do I apply a voucher code?",
    "Do loyalty points expire?",
    "Is there an expiry date on my points?",
    "what r ur opening times",
    "How do I unsubscribe from emails?",
    "Is the oat milk vegan?",
    "Can I speak to a human?",
    "Is there a minimum order value?",
    "Do you ship internationally?",
    "Do you sell gift cards?",
    "Is SKU GB-10001 in stock?",  # a product code, labelled as one
    "How do I find the tracking number for my order?",
    "How can I confirm my order went through?",
    "Can I have my order delivered instead of collecting it?",
    "How do I check if my voucher is still valid?",
    "What do I need to do to return my order?",
    "Who do I contact if my order is wrong?",
    "What happens if there is a duplicate charge on my card?",
    "Do I get charged for cancelling?",
    "Am I charged for delivery if I spend over 40?",
    "Will I be charged twice if I place the same order again?",
    "Why can't I pay with a Greenbasket gift card?",
    "Why do I need an account to order?",
    # Says something of the asker, but the answer is the reset procedure and needs nothing of theirs.
    "I forgot my password, how can I get back into my account?",
    # [banking77] general questions.
    "What countries do your accounts support?",
    "What types of cards and money do you accept?",
    "How do I obtain a second card?",
    "How do I go about changing my PIN?",
    "Can I reset my PIN?",
    "What happens if I forget my PIN?",
    "How much can I top up on my card?",
    "What are the age limits for your service?",
    "Where is the nearest Mastercard ATM?",
    "What does a 'pending payment' mean?",
    "Do I get charged if I get money?",
]


@pytest.mark.parametrize("message", PERSONAL)
def test_personal_questions_are_personal(message: str) -> None:
    assert is_personal(message) is True


@pytest.mark.parametrize("message", GENERIC)
def test_generic_questions_are_shared(message: str) -> None:
    assert is_personal(message) is False


def test_tables_are_large_and_disjoint() -> None:
    assert len(PERSONAL) >= 60
    assert len(GENERIC) >= 60
    assert len(set(PERSONAL)) == len(PERSONAL)
    assert len(set(GENERIC)) == len(GENERIC)
    assert not set(PERSONAL) & set(GENERIC)


# Introductions the question rules cannot read, whose greeting the semantic tier served to the next shopper asking the
# plain question (each failed end to end before session 21's reply check: tests/cache/test_personal_leaks.py).
# The guard gives may and will no meaning, lets a sign-off of three words through, and reads no word outside a-z.
GUARD_BLIND_INTRODUCTIONS = [
    ("how long does delivery take? thanks, may", "You're welcome, May! Delivery takes two days.", "May"),
    ("will here, how long does delivery take?", "Hi Will! Standard delivery takes two days.", "Will"),
    ("how long does delivery take? thanks, will", "Will, standard delivery takes two days.", "Will"),
    ("How long does delivery take? Kind regards, Summer", "Hi Summer, standard delivery takes two days.", "Summer"),
    ("how long does delivery take? thanks, 美玲", "You're welcome, 美玲! Standard delivery takes two days.", "美玲"),
]
# More introductions the question rules cannot read (no capitals, all capitals, names outside A-Z, another
# language), in the forms a reply addresses someone.
UNREAD_INTRODUCTIONS = [
    ("this is jane, how long does delivery take?", "Hi Jane! Standard delivery takes two days.", "Jane"),
    ("THIS IS JANE. HOW LONG DOES DELIVERY TAKE?", "Hello Jane, standard delivery takes two days.", "Jane"),
    ("zoë here, how long does delivery take?", "Thanks for asking, Zoë. Standard delivery takes two days.", "Zoë"),
    ("c'est émile, how long does delivery take", "Émile, standard delivery takes one to two working days.", "Émile"),
    ("Łukasz tutaj: how long does delivery take?", "Hi Łukasz! Standard delivery takes two days.", "Łukasz"),
    ("hey its priya again, how long is delivery", "Hello again PRIYA - delivery takes two days.", "Priya"),
    ("how long does delivery take? best wishes, sage", "Dear **Sage**, delivery takes two days.", "Sage"),
    ("how long does delivery take? x may", "Hi there!\nMay \u2014 delivery takes two days.", "May"),
    ("how long does delivery take? thanks, محمد", "You're welcome, محمد! Delivery takes two days.", "محمد"),
    ("how long does delivery take? ty, zoe", "Thank you Zoe for asking: it takes two days.", "Zoe"),
    ("it\u2019s rosa\u2019s question: how long is delivery?", "Hello, Rosa! It takes two days.", "Rosa"),
    ("which options are there? thanks, will", "- Hi Will, we offer:\n- Standard\n- Express", "Will"),
    ("which options are there? ta, sage", "**Sage**, we offer:\n1. Standard\n2. Express", "Sage"),
    *GUARD_BLIND_INTRODUCTIONS,
]
# Replies that repeat a capitalised word of the question where no one is addressed: a sentence's first word, a
# label, a heading, an item of a list, Title Case, a word inside a sentence, German nouns, a courtesy, a day.
NAMES_NOBODY = [
    ("how long does delivery take?", "Delivery takes one to two working days."),
    ("hi, how long does delivery take?", "Hi! Standard delivery takes one to two working days."),
    ("thanks! and returns?", "Thanks for asking. Returns are free within 30 days."),
    ("do you ship to the uk?", "Yes, we ship across the UK in two days."),
    ("do you deliver on sunday?", "We deliver every day. Yes, Sunday!"),
    ("can i pay with paypal?", "Yes, you can pay with PayPal at checkout."),
    ("is the trailblazer tent waterproof?", "Yes, the Trailblazer tent is fully waterproof."),
    ("shipping to ireland?", "Shipping to Ireland takes three days."),
    ("also, will it arrive today if i order now?", "Also, yes: I can confirm it will arrive today."),
    ("may i return a sale item?", "May I suggest our returns page? Yes, sale items may be returned."),
    ("what does standard delivery cost?", "Standard: free over 40 pounds. Express: 4.99."),
    ("Is SKU GB-10001 in stock?", "Yes, SKU GB-10001 (Fairtrade Bananas) is in stock."),
    ("Akzeptieren Sie PayPal?", "Ja, Sie können bei uns mit PayPal bezahlen."),
    ("Wie lange dauert die Lieferung?", "Die Lieferung dauert in der Regel ein bis zwei Tage."),
    ("how do i return an item?", "### How to Return an Item\n1. Open your order in the app."),
    ("how long does delivery take?", "**How Long Does Delivery Take?**\nStandard delivery takes two days."),
    ("will my order arrive today?", 'You asked "Will my order arrive today?" \u2014 orders before noon do.'),
    ("what is greenbasket's returns policy?", "Under Greenbasket's returns policy, most items go back in 14 days."),
    ("do you deliver on christmas eve?", "We don't deliver on Christmas Eve or Christmas Day."),
    # items of a list: what the store offers, not whom it addresses
    ("standard or express delivery?", "We offer:\n- Standard\n- Express"),
    ("standard or express delivery?", "Two options:\n* **Standard**, 2 days\n* **Express**, next day"),
    ("standard or express delivery?", "Options:\n1. Standard.\n2) Express!"),
    ("standard or express delivery?", "Options:\n  \u2022 Standard\n  \u2022 Express"),
]


@pytest.mark.parametrize(("question", "reply", "name"), UNREAD_INTRODUCTIONS)
def test_a_reply_calling_the_shopper_by_a_name_the_question_rules_missed_is_caught(
    question: str, reply: str, name: str
) -> None:
    assert name.casefold() in question.replace("\u2019", "'").casefold()
    assert is_personal(question) is False  # the question rules do not see these: the reply check must
    assert names_the_asker(question, reply) is True


@pytest.mark.parametrize(("question", "reply"), NAMES_NOBODY)
def test_a_reply_repeating_words_of_the_question_that_name_nobody_is_not_flagged(question: str, reply: str) -> None:
    assert names_the_asker(question, reply) is False


def test_a_name_the_question_does_not_give_is_not_the_askers() -> None:
    """A name in the reply alone (a person of the store) is not the asker's."""
    assert names_the_asker("who founded the shop?", "Hi! Jane Moss, in 1998.") is False


STORE_WORDS_TEXT = "delivery take working days order edit gift card checkout redeem sell grocery cancelled refunds"
STORE_WORDS_TEXT += " deliver vegan coeliac breads loaf placing after"
STORE_WORDS = word_forms([STORE_WORDS_TEXT])


@pytest.mark.parametrize(
    ("question", "reply", "echoed"),
    [
        ("My son Oliver has a severe peanut allergy, is the cake safe?", "As Oliver has a peanut allergy, no.",
         ["allergy", "oliver", "peanut"]),
        ("How do I redeem my gift card? The code is GIFT-ABCD-EFGH", "Enter GIFT-ABCD-EFGH at checkout.",
         ["abcd", "efgh"]),
        ("thanks! how long does delivery take?", "Thanks for asking! Standard delivery takes two days.", []),
        ("can i edit my order?", "Yes, you can edit your order until it is packed.", ["order"]),  # "your order"
        ("do you sell 抹茶?", "Yes, we sell 抹茶 in 100 g tins.", ["抹茶"]),
        # the store's words said of the asker are theirs ("you're …", "your …"); a preposition after "your" is not
        ("i'm vegan and coeliac: which breads?", "As you're vegan and coeliac, try the loaf.", ["coeliac", "vegan"]),
        ("can i edit my order after placing it?", "Yes, you can edit your order after placing it.", ["order"]),
        # inflections of the store's words are the store's words
        ("can i get a refund after cancelling?", "Yes: cancel and the refund follows.", []),
        ("do you deliver groceries on sunday?", "We deliver grocery orders every Sunday.", ["sunday"]),
    ],
)  # fmt: skip
def test_the_words_a_reply_repeats_that_the_store_does_not_know_are_its_echoes(
    question: str, reply: str, echoed: list[str]
) -> None:
    assert echoes(question, reply, STORE_WORDS) == echoed


def test_a_question_lacking_an_echo_may_not_have_the_answer() -> None:
    echoed = echoes("My son Oliver has a peanut allergy, is the cake safe?", "As Oliver has a peanut allergy, no.",
                    STORE_WORDS)  # fmt: skip
    assert lacks_echoes("Is the cake safe with a peanut allergy?", echoed)  # no Oliver
    assert not lacks_echoes("my son OLIVER has a peanut allergy: is the cake safe?", echoed)
    assert not lacks_echoes("Is the cake safe?", [])  # nothing repeated: nothing to lack


def full_width(text: str) -> str:
    """``text`` typed with a full-width keyboard (U+FF01..U+FF5E for ASCII's printable characters)."""
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


def test_the_rules_read_letters_typed_full_width_as_the_cache_key_does() -> None:
    """The exact tier's key reads text in Unicode's compatibility form (NFKC: a full-width "Jane" is "Jane"), and
    the rules about whose an answer is read the text as typed: a name or a "my" typed full width passed all three
    (review helper-50), so an answer that calls the shopper by name could be stored for everyone under the same key
    as the plain question."""
    jane, oliver = full_width("Jane"), full_width("Oliver")
    assert is_personal(f"Where is {full_width('my')} order?") is True
    assert is_personal(f"This is {jane}. How long does delivery take?") is True
    assert names_the_asker(f"how long does delivery take? thanks, {jane}", "Hi Jane! Delivery takes 2 days.") is True
    question = f"My son {oliver} has a peanut allergy, is the cake safe?"
    echoed = echoes(question, "As Oliver has a peanut allergy, no.", STORE_WORDS)
    assert echoed == ["allergy", "oliver", "peanut"]
    assert not lacks_echoes(question, echoed)


KNOWN = "Telephone support\nCall 0800 123 4567 or write to help@shop.example. Item GB-10001 costs EUR 1,299.00."


@pytest.mark.parametrize(
    ("reply", "found"),
    [
        ("Your order GB-48213 arrives on Monday.", ["48213"]),
        ("We emailed jane.doe@example.com about it.", ["jane.doe@example.com"]),
        ("We will call you on 07700 900123.", ["07700900123"]),
        ("Call us on 0800 123 4567 or write to help@shop.example.", []),
        ("GB-10001 costs EUR 1,299.00; delivery takes 2 to 3 days.", []),
        ("Call us on 0800\u00a0123\u00a04567.", []),
        ("Orders over EUR 40 ship free within 48 hours.", []),
        # The store's own numbers, written otherwise than in its passages (review helper-53).
        ("Call us on +44 800 123 4567.", []),
        ("GB-10001 costs EUR 1,299; that is EUR 1299.00 with VAT.", []),
        ("Order by 2024-12-18 or 18/12/2024 for Christmas.", []),
        ("We stock sizes 36 38 40 42 and 44.", []),
        ("Your card 4111 1111 1111 1111 was charged.", ["4111111111111111"]),
    ],
)
def test_a_reply_has_unknown_details_when_its_knowledge_lacks_an_address_or_a_long_number(
    reply: str, found: list[str]
) -> None:
    assert unknown_details(reply, KNOWN) == found


def test_looking_for_unknown_details_takes_linear_time() -> None:
    started = time.perf_counter()
    assert unknown_details("a" * 20_000 + " jane@example.com " + "1 " * 20_000, KNOWN) == ["jane@example.com"]
    assert time.perf_counter() - started < 0.5
