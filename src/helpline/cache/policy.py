"""What may be cached, and for whom.

Only good answers: an ``answer`` that cites what we gave it, complete, not an apology, not the last-resort
fallback standing in for the configured models. Personal questions are cached only for their owner: those about the
asker's own order, parcel, payment, card, refund, return or account ("where's my stuff", "I was charged twice",
"cancel my order"), and those giving an order id, tracking number or contact detail. The test is whether a correct
answer needs that shopper's own data; a how-to or policy question stays shared even when it says "my" ("how do I
cancel my order?", "what should I do if my card is declined?"). When in doubt it says personal: a personal answer
shared leaks one shopper's answer to another, a shared question kept personal only costs hit rate.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Sequence
from functools import lru_cache

from helpline.cache import guards

# The patterns run on every request, on the text lower-cased (they are written in lower case: case-insensitive
# matching is several times slower), typographic apostrophes made plain, a space in front. A rule starts at a word,
# found by the character before it (_AT): a pattern that starts with a character class is searched for quickly, one
# that starts with \b or a look-behind is tried at every position.
_AT = r"[ \t\r\n,;:.?!()\"/]"


def _rules(rules: Iterable[tuple[str, ...]], tail: str = "") -> re.Pattern[str]:
    """One pattern from rules (first words, what follows[, words that must not come just before]), the first words
    merged into a trie: at each word of the message only the rules that start with it are tried, and a look-behind
    is tried only where its word is. What follows must itself end the word (start with a space, an apostrophe...)."""
    follow: dict[str, list[str]] = {}
    for words, after, *not_after in rules:
        for word in words.split():
            guard = "".join(f"(?<!{before} {word})" for before in (not_after[0].split() if not_after else ()))
            follow.setdefault(word, []).append(guard + after)
    merged = {word: "(?:" + "|".join(afters) + ")" for word, afters in follow.items()}
    return re.compile(_AT + _trie(sorted(merged), merged, 0) + tail)


def _trie(words: Sequence[str], follow: dict[str, str], depth: int) -> str:
    branches = []
    for char, group in itertools.groupby(words, key=lambda word: word[depth : depth + 1]):
        if char:
            branches.append(re.escape(char) + _trie(list(group), follow, depth + 1))
        else:
            branches.append(follow[next(group)])
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


# Digits that identify one shopper: "#482", a street address, a phone number, an id of five or more digits (an order:
# "12345", "GB-48213"; a tracking number: 1Z999AA10123456784 ends in ten digits, Royal Mail's AB123456789GB has nine)
# unless labelled a product ("SKU GB-10001", "item GB-10990"), four digits labelled an order ("order no: 1234").
# Looked for only when the text has a digit; each pattern starts with a character class (and [0-9], not \d, which
# is slower), so it is searched for quickly.
_DIGIT = re.compile(r"[0-9]")
_PHONE_OR_ADDRESS = re.compile(
    r"[#0-9](?:(?<=#)\s?[0-9]{3}|(?<=[0-9])(?:[0-9 ()-]{5,}[0-9]|[0-9]{0,3}[a-z]?\s+(?:[a-z]+\s+){1,3}?(?:street|st"
    r"|road|rd|avenue|ave|lane|close|drive|way|crescent|court|place|gardens|terrace|grove|square|mews)\b))"
)
_DIGITS = re.compile(r"[0-9][0-9]{3,}")
_PRODUCT_LABEL = re.compile(r"(?:sku|item|product|article)\W*(?:[a-z]{1,3}-?)?$")
_ORDER_LABEL = re.compile(
    r"(?:order|ref|reference|invoice|return|rma|tracking|parcel|case|ticket|transaction)\s*(?:no\.?|num(?:ber)?|id|#"
    r"|code)?\s*(?:is\s*)?[:=]?\s*#?\s*(?:[a-z]{1,3}-?)?$"
)


def _identifying_number(text: str) -> bool:
    if _PHONE_OR_ADDRESS.search(text):
        return True
    for digits in _DIGITS.finditer(text):
        before = text[max(0, digits.start() - 24) : digits.start()]
        if len(digits.group()) >= 5:
            if _PRODUCT_LABEL.search(before) is None:
                return True
        elif _ORDER_LABEL.search(before) is not None:
            return True
    return False


_EMAIL = re.compile(r"@[\w-]+\.[a-z]")

_MY = r"(?:my|our)"
# Words that make what follows a hypothetical: "what if there is a duplicate charge?"
_HYPOTHETICAL = "if when once unless case whether before after"
# The asker as the first word of a rule: "I've been charged", "ive never got", "I'm still waiting".
_I = "i we i've ive we've weve"
_I_AM = "i we i'm im we're"
# Up to four words between "my" and what is said of it, not crossing into another clause.
_SPAN = r"(?:\s+(?!(?:if|when|once|unless|and|or|but|so|because|then|before|after)\b)[\w'#-]+){0,4}?"
# What can happen to a shopper's order, parcel, payment, card, refund or account.
_EVENT = (
    r"(?:arrived|came|delivered|shipped|dispatched|late|delayed|missing|lost|stolen|stuck|pending|declined|rejected"
    r"|refused|failed|bounced|charged|overcharged|refunded|blocked|locked|suspended|frozen|closed|deactivated|disabled"
    r"|hacked|compromised|cancell?ed|canceled|broken|damaged|cracked|smashed|crushed|squashed|leaking|leaked|spoil(?:ed|t)"
    r"|rotten|mouldy|moldy|expired|melted|defrosted|wrong|incorrect|incomplete|empty|gone|disappeared|vanished|reverted"
    r"|returned|showing|shown|showed|yet)"
)
_NEG_PAST = (
    r"(?:never|hasn'?t|has\s+not|haven'?t|have\s+not|hadn'?t|had\s+not|didn'?t|did\s+not|wasn'?t|weren'?t"
    r"|(?:has|have)\s+yet\s+to)"
)
_NEG_PRESENT = (
    r"(?:isn'?t|is\s+not|aren'?t|are\s+not|doesn'?t|does\s+not|don'?t|do\s+not|won'?t|will\s+not|can'?t|cannot|not)"
)
_NEVER_CAME = (
    rf"(?:has\s+|have\s+|had\s+)?{_NEG_PAST}\s+(?:yet\s+|even\s+)?(?:arrived?|come|came|turn(?:ed)?\s+up"
    r"|show(?:ed|n)?\s+up|been\s+delivered|go(?:ne)?\s+through|work(?:ed)?|been\s+refunded)\b"
)
_DAMAGED = (
    r"\s+(?:\w+\s+)?(?:broken|damaged|cracked|smashed|crushed|squashed|open|opened|leaking|melted|defrosted|warm"
    r"|spoil(?:ed|t)|rotten|mouldy|moldy|late|wet|torn|empty|incomplete|short)\b"
)
_CHARGED = (
    r"(?:charged|billed|overcharged|double[- ]charged|debited|refunded|scammed|hacked|locked\s+out|logged\s+out|blocked"
    r"|banned|declined|rejected|refused|denied)"
)
# What a question about a payment names.
_PAYMENT = r"(?:charges?|payments?|transactions?|debits?)"

# Reports of what happened (past and perfect tense) and questions about the asker's own things: personal wherever
# they are, even in an "if" clause ("what do I do if my order never arrived?").
_OWN_STATE = _rules(
    (
        # my/our X + what happened to it: "my parcel hasn't shown up", "my card was declined", "my eggs arrived cracked"
        (
            "my our",
            rf"{_SPAN}\s+(?:{_NEG_PAST}|arrived|came(?!\s+from)|turned\s+up|showed\s+up"
            r"|(?:was|were|got|has\s+been|have\s+been|had\s+been)\s+(?:\w+\s+)?"
            rf"(?:{_EVENT}|off|bad|stale|bruised|faulty|defective|out\s+of\s+date))\b",
        ),
        # "my damaged eggs", "our missing parcel": the state is taken for granted, even in "can I get a refund for ..."
        (
            "my our",
            r"\s+(?:damaged|broken|cracked|smashed|missing|late|delayed|lost|stolen|wrong|incorrect|declined|failed"
            r"|rejected|cancell?ed|canceled|faulty|defective|rotten|mouldy|moldy|expired|spoil(?:ed|t)|leaking|incomplete"
            r"|pending|blocked|locked|hacked|frozen|suspended|duplicate|double|unauthori[sz]ed)\b",
        ),
        # "I still haven't got my package", "we never received our order"
        (
            _I,
            rf"(?:\s+(?:have|had|still|just|really|even|also|already|only))*\s+{_NEG_PAST}\s+(?:\w+\s+)?(?:got|gotten"
            r"|get|receive|received|recieved|seen|see|had|heard|been\s+able|managed|made|make|do|ordered|order|buy|bought"
            r"|place|placed|request|requested|authori[sz]ed?|approve|recogni[sz]e)\b",
        ),
        # "I was charged twice", "ive been locked out", "why was I charged"
        # (not "am I charged for ...?", "will I be charged if ...?": those ask for the policy)
        (
            f"{_I} me us",
            rf"(?:\s+(?:was|were|have|has|had|been|got|just|also|still|already))*\s+{_CHARGED}\b",
            "am are do does will would should can could may might",
        ),
        # "I'm still waiting for/on ..."
        (
            f"{_I_AM} i've ive",
            r"(?:\s+(?:am|are|have|been|still|just|really|currently))*\s+waiting(?:\s+[^\s.?!;]+){0,3}?\s+(?:for|on)\b",
        ),
        # "I was promised a refund", "we were sent the wrong box", "ive been told ..."
        (
            _I,
            r"(?:\s+(?:was|were|have\s+been|had\s+been|been|got))+\s+(?:promised|sent|given|offered|told|quoted|issued"
            r"|emailed|texted)\b",
        ),
        # "why haven't I got", "did I not get"
        ("haven't havent hasn't hasnt didn't didnt wasn't wasnt weren't werent", rf"\s+(?:i|we|{_MY})\b"),
        # "why can't I cancel my order", "why doesn't my card work" (not "why can't I pay with a gift card?")
        (
            "can't cant cannot couldn't couldnt won't wont doesn't doesnt isn't isnt",
            rf"\s+(?:(?:i|we)(?:\s+[\w'-]+){{1,4}}?\s+)?{_MY}\b",
        ),
        ("did", r"\s+(?:i|we)\s+not\b"),
        # "has my order shipped", "did my return arrive" (not "can I have my", "to have my")
        ("has have had did", rf"\s+{_MY}\b", "i we to you they"),
        # "have you received my return", "did you charge me"
        (
            "did have has",
            r"\s+(?:you|u)\s+(?:\w+\s+)?(?:charge|charged|bill|billed|cancel|cancell?ed|canceled|refund|refunded"
            r"|receive|received|get|got|send|sent|ship|shipped|lose|lost)\s+(?:my|our|me|us|it|them|the\s+(?:[\w-]+\s+)?"
            r"(?:parcel|package|return|item|items|order|refund|payment|money))\b",
        ),
        # "you charged me twice", "the card you sent me", "you have declined my payment"
        (
            "you u they you've youve",
            r"(?:\s+(?:have|has|had|just|already|also|still|wrongly|accidentally|mistakenly))*\s+(?:charged|billed"
            r"|overcharged|debited|took|taken|sent|shipped|delivered|gave|given|cancell?ed|canceled|cancel|declined"
            rf"|decline|blocked|block|locked|suspended|closed|refunded|lost|missed|forgot|forgotten)\s+(?:me|us|{_MY})\b",
        ),
        # "someone hacked my account", "the ATM took my card"
        (
            "hacked accessed stole stolen took taken ate swallowed kept retained charged declined rejected blocked "
            "locked froze suspended left dumped dropped threw opened broke damaged crushed squashed lost missed",
            rf"\s+(?:into\s+)?{_MY}\b",
        ),
        # a definite thing the asker ordered or sent: "the item I received", "the parcel I sent back"
        (
            "the this that these those",
            r"\s+(?:[\w-]+\s+){1,2}?(?:i|we)(?:'ve|ve)?\s+(?:ordered|bought|purchased|paid\s+for|received|recieved"
            r"|got|sent|returned|made|did|placed|booked|requested|asked\s+for|was\s+(?:sent|promised|told|given))\b",
        ),
        # "the driver never showed up", "the top up failed", "it never came"
        (
            "the",
            rf"\s+(?:[\w-]+\s+){{1,4}}?(?:{_NEVER_CAME}|(?:failed|bounced|(?:was|got)\s+(?:declined|rejected|cancell?ed"
            r"|canceled|refused))\b)",
        ),
        ("it they", rf"\s+{_NEVER_CAME}"),
        # "you never sent me", "they didn't deliver my order", "it didn't give me my cash"
        (
            "it they you u",
            rf"\s+(?:{_NEG_PAST}|still\s+haven'?t)\s+(?:[\w-]+\s+){{1,2}}?(?:me|us|{_MY})\b",
        ),
        # "you sent the wrong item", "they delivered someone else's shopping"
        (
            "you u they you've youve",
            r"(?:\s+(?:have|has|just|also))?\s+(?:sent|delivered|gave|given|brought|packed|picked|charged|billed"
            r"|shipped)\s+(?:[\w'-]+\s+){0,2}?(?:wrong|incorrect|someone|expired|damaged|broken|rotten|mouldy|off"
            r"|twice|double|too\s+much|less|fewer|half)\b",
        ),
        # "nothing has arrived", "still no sign of my parcel", "order not received", "still waiting on my refund"
        ("nothing", r"\s+(?:has\s+|have\s+)?(?:arrived|came|turned\s+up|showed\s+up|shown\s+up|been\s+delivered)\b"),
        ("no", rf"\s+sign\s+of\s+(?:the\s+)?{_MY}\b"),
        (
            "order parcel package delivery shipment shopping groceries item items card payment refund return",
            r"\s+(?:still\s+)?(?:not|never)\s+(?:yet\s+)?(?:arrived|received|recieved|delivered|here|showing|come"
            r"|refunded|processed)\b",
        ),
        ("still", r"\s+waiting\s+(?:for|on)\b"),
        ("waiting", rf"(?:\s+[^\s.?!;]+){{0,3}}?\s+(?:for|on)\s+{_MY}\b"),
        # "something arrived broken", "the eggs were delivered cracked", "an item was missing"
        ("arrived came", _DAMAGED),
        ("turned", r"\s+up" + _DAMAGED),
        ("was were got", r"\s+delivered" + _DAMAGED),
        ("was were went been", r"\s+missing\b"),
        # "there are two payments on my card"
        (
            "there",
            rf"(?:'s|s|\s+is|\s+are|\s+was|\s+were)\s+(?:[\w-]+\s+){{0,4}}?{_PAYMENT}\s+(?:on|in|from|to)\s+{_MY}\b",
            _HYPOTHETICAL,
        ),
        # questions about the asker's own things
        ("where", rf"(?:'s|s|\s+is|\s+are|\s+r|\s+has|\s+have|\s+did|\s+was|\s+were)\s+(?:(?:the|all)\s+)?{_MY}\b"),
        ("what", r"(?:'s|s|\s+is)?\s+(?:happened|happening|going\s+on)\s+(?:to|with)\b"),
        ("what", rf"\s+time\s+(?:will|is|does|should)\s+(?:{_MY}|the\s+driver)\b"),
        (
            "is are was were",
            rf"\s+{_MY}(?:\s+[\w-]+){{0,3}}?\s+(?:on\s+(?:its|the)\s+way|coming|arriving|here|late|lost|ready|shipped"
            r"|dispatched|delivered|out\s+for\s+delivery|through|processed|processing|pending|approved|blocked|locked"
            r"|active|cancell?ed|canceled|refunded|on\s+track|delayed|stuck|missing|still)\b",
        ),
        ("when", rf"\s+(?:will|is|does|do|should|would|can)\s+{_MY}\b"),
        ("when", rf"\s+(?:will|do|should|can)\s+(?:i|we)\s+(?:get|receive|see|have)\s+{_MY}\b"),
        ("how", rf"\s+(?:much\s+)?long(?:er)?\s+(?:until|till|til|before)\s+(?:i|we|{_MY})\b"),
        ("how", rf"\s+long\s+will\s+{_MY}\b"),
        # "why was I charged", "why did my payment fail", "why is my account locked" (not "why can't I pay by cheque?")
        ("why", rf"\s+(?:was|wasn'?t|were|weren'?t|has|hasn'?t|have|haven'?t|had|did|didn'?t)\s+(?:i|we|{_MY})\b"),
        ("why", rf"\s+(?:is|isn'?t|are|aren'?t|does|doesn'?t|do|don'?t|can'?t|won'?t)\s+{_MY}\b"),
        ("why", rf"\s+{_MY}\b"),
    )
)

# What a request is about: "cancel my order", "change the address on our order", "refund me", "look into my refund"
_REQUESTED = (
    r"(?:\s+(?:up|into|at|for|out))?(?:\s+(?!(?:if|when|once|unless|before|after)\b)[\w'#-]+){0,4}?"
    rf"\s+(?:{_MY}|me|us)\b"
)

# States in the present tense and requests: personal, except inside a how-to or hypothetical clause (_HOW_TO), where
# they ask for the procedure or the policy ("what should I do if my card is declined?", "how do I cancel my order?").
_OWN_REQUEST = _rules(
    (
        # "our order is late", "my refund isn't showing up", "my card keeps getting declined" (not "get my X delivered")
        (
            "my our",
            rf"{_SPAN}\s+(?:{_EVENT}|{_NEG_PRESENT}|still|twice|went\s+through|gone\s+through"
            rf"|(?:gets|keeps?\s+getting)\s+(?:\w+\s+)?{_EVENT})\b",
            "get have had",
        ),
        # a contact detail given: "my address is", "my name is", "our postcode:"
        (
            "my our",
            r"\s+(?:[\w-]+\s+)?(?:address|postcode|post\s+code|zip(?:\s+code)?|phone|number|mobile|email|e-mail|name"
            r"|surname|username|card\s+number|sort\s+code|iban|date\s+of\s+birth|dob)\s*(?:is|=|:)",
        ),
        # "I can't log in", "I don't recognise this payment"
        (
            _I_AM,
            r"(?:\s+(?:am|are|still|just|really))*\s+(?:can'?t|cannot|can\s+not|couldn'?t|could\s+not|don'?t"
            r"|do\s+not|am\s+unable\s+to|unable\s+to|not\s+able\s+to|not)\s+(?:\w+\s+)?(?:log|login|sign|access"
            r"|get\s+in|pay|check\s*out|complete|use|recogni[sz]\w*|cancel|change|track|apply|place|reset"
            r"|(?:see|find)\s+(?:(?:my|our|it|them)\b|(?:the|a|any|this|that)\s+(?:[\w-]+\s+)?(?:refund|payment|charge"
            r"|transaction|order|parcel|package|delivery|item|money|credit)s?))\b",
        ),
        # "I still don't have a refund", "we don't have our order", "I'm missing two items"
        (
            _I_AM,
            r"(?:\s+still\s+(?:don'?t|do\s+not)\s+(?:have|see)|\s+(?:don'?t|do\s+not)\s+have\s+(?:my|our)"
            r"|(?:\s+(?:am|are))?\s+(?:still\s+)?missing)\b",
        ),
        # "why am I being charged", "I keep getting charged"
        (_I_AM, rf"(?:\s+(?:am|are|keep|getting|being|still|just))+\s+{_CHARGED}\b"),
        # ordered, got, received ... + when, or what went wrong: "I ordered the wrong size yesterday"
        (
            _I,
            r"(?:\s+(?:have|had|just|only|already|recently|also))*\s+(?:ordered|bought|purchased|paid|placed|booked"
            r"|received|recieved|got|returned|sent|made|tried|topped|requested|asked|cancell?ed|canceled|reported"
            r"|contacted|called|emailed)\b(?:\s+[^\s.?!;]+){0,6}?\s+(?:yesterday|today"
            r"|tonight|earlier|this\s+(?:morning|afternoon|evening|week)|last\s+\w+|ago|on\s+\w+day|my|our|wrong"
            r"|broken|damaged|someone|instead|but|only|twice|duplicate|expired|faulty)\b",
        ),
        ("i we", r"\s+only\s+(?:got|received|recieved)\b"),
        # "I have a duplicate charge", "why do I see two charges"
        (
            _I,
            r"(?:\s+(?:just|also|now|can|still|only|have|had|recently))*\s+(?:have(?!\s+to)|got|received|see|saw"
            r"|noticed|spotted|found)\s+(?:[\w-]+\s+){0,3}?"
            rf"{_PAYMENT}\b",
        ),
        (
            "it they",
            r"(?:'s|s|'re)?\s+(?:still\s+)?(?:isn'?t|aren'?t|is\s+not|are\s+not|not)\s+(?:here|there)\b",
        ),
        (
            "it they",
            r"\s+(?:still\s+)?(?:doesn'?t|does\s+not|isn'?t|is\s+not|won'?t|will\s+not|keeps?)\s+(?:\w+\s+)?"
            r"(?:work|working|arrive|arriving|load|loading|go\s+through|going\s+through|show|showing|failing|declining)\b",
        ),
        # "the card payment is declined", "the delivery is late"
        (
            "the",
            r"\s+(?:[\w-]+\s+){1,3}?(?:is|are)\s+(?:still\s+)?(?:declined|rejected|pending|missing|late|stuck|lost"
            r"|delayed|broken|damaged|wrong|not\s+(?:here|working))\b",
        ),
        # "a duplicate charge", "a fraudulent payment", "items missing from my order", "the card you sent to me"
        (
            "duplicate double repeat repeated fraudulent unauthorised unauthorized unrecognised unrecognized "
            "suspicious strange unknown",
            rf"\s+(?:[\w-]+\s+)?{_PAYMENT}\b",
        ),
        ("missing", rf"\s+(?:from|in)\s+(?:the\s+)?{_MY}\b"),
        ("sent shipped delivered posted mailed dispatched", r"\s+(?:out\s+)?to\s+(?:me|us)\b"),
        # "tracking says delivered", "the app shows it was cancelled"
        (
            "says said shows showed showing",
            r"\s+(?:(?:it|that|they)\s+(?:was|is|were|are|has\s+been|have\s+been)\s+)?(?:delivered|dispatched"
            r"|cancell?ed|canceled|pending|declined|failed|refunded|returned|collected)\b",
        ),
        # "the tracking number for my order", "the delivery date of my parcel", "the ETA on our order"
        ("tracking", rf"\s+(?:number|info|information|link|details|code)\s+(?:of|on|for)\s+(?:the\s+)?{_MY}\b"),
        ("delivery", rf"\s+(?:date|time|slot|day)\s+(?:of|on|for)\s+(?:the\s+)?{_MY}\b"),
        ("eta", rf"\s+(?:of|on|for)\s+(?:the\s+)?{_MY}\b"),
        # "cancel my order", "can you check my order", "refund me", "change the address on my order" (the verbs that
        # are also nouns not after "a", "the"...: "how long does a refund take to show on my card?")
        (
            "update amend modify edit alter track trace locate find reship resend re-send replace stop redirect "
            "reroute re-route expedite reschedule rebook unlock unblock reactivate reset close delete confirm "
            "investigate chase reimburse remove speed",
            _REQUESTED,
        ),
        ("cancel change check refund return hold move fix look sort", _REQUESTED, "a an the my our your"),
        ("status", rf"\s+of\s+(?:the\s+)?{_MY}\b"),
        ("order", r"\s+status\b"),
        ("where", rf"\s+{_MY}(?:\s+[\w'-]+){{1,3}}?\s+(?:is|are|was|were|has|have|went|gone|ended|got)\b"),
        # "I want a refund", "I need my refund", "I'd like a replacement"
        (
            f"{_I} i'd id",
            r"(?:\s+(?:would|really|just|still|now))*\s+(?:want|need|like|demand|expect|deserve|request|am\s+owed"
            r"|are\s+owed)\s+(?:to\s+(?:get|have|receive)\s+)?(?:(?:a|an|my|our|the|full|some|me|it)\s+)?(?:(?!to\b)[\w-]+\s+)?"
            r"(?:refund|replacement|money\s+back|compensation|credit|exchange)\b",
        ),
    )
)

# A how-to or hypothetical clause, to the next punctuation: "how do I cancel my order", "can I change my address",
# "is it possible to update my card", "what should I do if my card is declined".
_HOW_TO = _rules(
    (
        ("how", r"\s+(?:do|can|could|should|would|will|shall|may|does|to|(?:i|we)\s+(?:can|could|do|should))"),
        ("where", r"\s+(?:do|can|could|should|would|will)\s+(?:i|we|you|one)"),
        ("can could may shall should must", r"\s+(?:i|we|one)"),
        ("do", r"\s+(?:i|we)\s+(?:need|have)\s+to"),
        ("am", r"\s+i\s+(?:able|allowed)"),
        ("are", r"\s+we\s+(?:able|allowed)"),
        ("allow allows", r"\s+(?:me|us)\s+to"),
        ("the a any", r"\s+way\s+to"),
        ("is", r"\s+(?:it\s+possible|there\s+(?:a|any)\s+way)"),
        ("what what's whats", r"(?:\s+is|\s+are)?\s+the\s+(?:steps|process|procedure|way|best\s+way)"),
        ("what", r"\s+do\s+(?:i|we)"),
        # a hypothetical: "what if my card is declined", not "can you check if my refund went through?"
        (
            "when once whenever unless case before after if whether",
            r"\s+(?:i|we|you|my|our|someone|one|the|it|they|an?|there)",
            "see check know me confirm out wonder wondering",
        ),
    ),
    tail=r"\b[^.?!,;]*",
)


# Questions after the asker's own data, in shapes the rules above do not list: what/which/how many… of "my" thing
# ("what's my order number?", "how much did I pay for my last order?"; not "what happens to my points if…", a
# policy), what "I" did or have ("did I get refunded?", "how many points do I have?", "the order I just placed"),
# a delivery that did not come, and a shopper introducing themselves by name (a reply may greet them by it).
_OWN_DATA = re.compile(
    _AT + r"(?:(?:what(?!\s+happens?\b)|what's|whats|which|when's|whens|where's|wheres|how\s+many|how\s+much)\b"
    r"[^.?!;]*\s(?:my|mine|our)|i'm\s+[a-z]+\s+[a-z]+\s*[.,!]|(?:hi|hello|hey)[ ,]+(?:this\s+is|it's|i'm)\s+[a-z]+"
    r"|(?:didn't|did\s+not|never|hasn't|has\s+not)\s+(?:deliver|arrive|come|show|turn)\w*|did\s+i|do\s+i\s+have"
    r"|have\s+i|i\s+(?:just|already|ordered|placed|paid|bought|received|returned|sent))\b"
)


# A shopper giving their name, in the forms the lower-case rule above does not list: read on the text as typed, where
# a capital marks a name ("This is Jane, …", "I am Jane Doe", "Mary Jane Watson here!"; not "this is urgent"). A
# reply may greet them by it, and names are not redacted: shared, it reached another shopper (a review, session 18).
_NAME_WORD = r"[A-Z](?:'[A-Z])?[a-z]+(?:[A-Z][a-z]+|-[A-Z][a-z]+)?"  # Jane, McDonald, O'Brien, Anne-Marie
_INTRODUCTION = re.compile(
    rf"(?:\b(?:[Tt]his\s+is|[Ii]t's|[Ii]t\s+is|I'm|I\s+am|[Nn]ame's|[Cc]all\s+me)\s+(?P<name>{_NAME_WORD}"
    rf"(?:\s+{_NAME_WORD}){{0,2}})"
    rf"|(?:^|[.!?,;:]\s*|\b(?:[Hh]i|[Hh]ello|[Hh]ey)\s*(?:[,!]\s*)?)(?P<signed>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,3}})"
    r"\s+here(?:\s*(?:[.,!?:;\-]|$)|\s+(?:again|and)\b))"
)
_CAPITALISED = re.compile(_NAME_WORD)
# Capitalised words after "I'm", "It's", "This is" or before "here" that are no name (a review, session 19): days,
# months that are no first name, nationalities, diets, roles, payment brands, moods. Names that are also words
# (April, May, June, Grace, Hope) stay names: a false "personal" costs a cache hit, a missed one shares a greeting.
_NOT_NAME_WORDS = """
monday tuesday wednesday thursday friday saturday sunday january february march july september october november
december christmas easter today tomorrow tonight weekend morning evening english british german french spanish
italian irish scottish welsh american canadian australian dutch polish indian chinese japanese european swiss
austrian belgian portuguese swedish danish norwegian finnish greek turkish vegan vegetarian veggie kosher halal
coeliac celiac diabetic pescatarian lactose gluten allergic pregnant student customer member newbie mum mom dad
parent teacher nurse business shop company admin plus premium prime guest apple google amazon paypal visa
mastercard amex klarna pay urgent important new not very really just still also back sorry interested unable done
the about regarding re ok okay yes no black cyber boxing day same quick question confused broken damaged looking
wondering writing asking trying hoping calling
"""
_NOT_NAMES = frozenset(_NOT_NAME_WORDS.split())
_MY_NAME = re.compile(r"\b(?:my\s+name\s+is|my\s+name's)\b")


# Words a reply may set off or put after a greeting that name nobody: the pronoun I, courtesies and words that
# open a sentence ("Yes, …", "Also, …").
_COURTESY_WORDS = """
i hi hello hey dear thanks thank welcome yes yeah sure ok okay please sorry great good absolutely certainly of course
unfortunately happy glad help also so now well actually really still just no and but or then here there first
finally however
"""
_COURTESIES = frozenset(_COURTESY_WORDS.split())
# Words after which a capitalised word is the one addressed ("Hi Will", "Hello again PRIYA", "Thank you Zoë").
_GREETING_WORDS = "hi hello hey dear thanks you welcome cheers sorry morning afternoon evening again bye"
_GREETINGS = frozenset(_GREETING_WORDS.split())
_SETS_OFF = ",.!?;\n\u2014\u2013-\uff0c\u3002\uff01\uff1f\u060c"  # before or after an address (Latin, CJK, Arabic)
# Words as written, in any script and case, with inner apostrophes and hyphens (Zoë, Łukasz, O'Brien, Anne-Marie).
_LETTERS = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")
# What opens an item of a list ("- ", "* ", "+ ", "• ", "1. ", "2) "): a word after it is a term, not an address.
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+\u2022\u2013]|\d{1,3}[.)])[ \t]+[*_\"'(]*")


def names_the_asker(question: str, reply: str) -> bool:
    """The reply addresses the shopper by a name they gave, however they typed it ("thanks, will", "kind regards,
    Summer", "ZOË HERE", "thanks, 美玲"): a word of the question that the reply writes with a capital (or in a script
    without case) where one addresses someone: after a greeting ("Hi Summer", "welcome May") or set off by
    punctuation on both sides ("Will, standard delivery…", "Thanks for asking, Zoë."). Where it stands, not what
    it means: a name can be any word (May, Summer, Sage), and the semantic guard lets a question with such a name
    hit the same question without it. A label ("Delivery: …"), a heading, an item of a list ("- Standard"), a word
    inside a sentence are no address.
    The question rules (is_personal) read introductions typed in English with capitals; this reads what the answer
    would share. A false positive costs a cache write, not a leak."""
    question, reply = _compatible(question), _compatible(reply)
    asked = {_folded(word) for word in _LETTERS.findall(question)}
    for found in _LETTERS.finditer(reply):
        word = found.group()
        folded = _folded(word)
        if word[0].islower() or folded not in asked or folded in _COURTESIES or folded in _NOT_NAMES:
            continue
        before = reply[: found.start()].rstrip(" \t\"'(*_")
        after = reply[found.end() :].lstrip(" \t\"')*_")
        if before[-1:].isalpha() and _folded(before.rsplit(None, 1)[-1]) in _GREETINGS:
            return True
        if (
            (not before or before[-1] in _SETS_OFF)
            and (not after or after[0] in _SETS_OFF)
            and not _opens_item(reply, found.start())
        ):
            return True
    return False


# From the start of a word only: tried at every character, a long word without "@" cost the square of its length
# (a reply of 20,000 letters held the event loop for 1.8 s).
_EMAIL_ADDRESS = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Digits with spaces, dashes or brackets between them: one number as people write an order, a phone or a card
# ("0800 123 4567", "GB-48213"). Not across a point, a comma or a slash: a price ("EUR 1,299.00") or a date
# ("18/12/2024") is no identifier.
_NUMBER_RUN = re.compile(r"[0-9](?:[0-9 ()-]*[0-9])?")
_DASHED_DATE = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|[0-9]{1,2}-[0-9]{1,2}-[0-9]{2,4}")
_DIGIT_GROUP = re.compile(r"[0-9]+")
IDENTIFYING_DIGITS = 5  # an order, a phone, a card or an account number has at least this many
SUBSCRIBER_DIGITS = 9  # the end of a number that stays the same however it is written (+44 20…, 020…)


def unknown_details(reply: str, known: str) -> list[str]:
    """The email addresses and numbers of five digits or more (an order, a phone, a card, an account) in ``reply``
    that ``known`` (the question and the passages it drew on) does not have: details of somebody, not of the store
    nor of what the shopper asked. An answer for everyone must not carry one (review, session 26: "Your order
    GB-48213 for jane.doe@example.com arrives…", written for a question that named neither, was cached for every
    shopper). A number the store publishes counts as known however it is written ("+44 20 7946 0958" for "020 7946
    0958"): its last nine digits are compared."""
    reply, known = _compatible(reply).lower(), _compatible(known).lower()
    found = [email for email in _EMAIL_ADDRESS.findall(reply) if email not in known]
    if _DIGIT.search(reply):
        numbers = [number for number in _numbers(known) if len(number) >= IDENTIFYING_DIGITS]
        for number in _numbers(reply):
            tail = number[-SUBSCRIBER_DIGITS:]
            if len(number) >= IDENTIFYING_DIGITS and not any(
                tail in other or other[-SUBSCRIBER_DIGITS:] in number for other in numbers
            ):
                found.append(number)
    return found


def _numbers(text: str) -> Iterator[str]:
    """The numbers of ``text`` as their digits (see _NUMBER_RUN), but for dates and lists of short numbers ("sizes
    36 38 40 42")."""
    for run in _NUMBER_RUN.findall(text):
        groups = _DIGIT_GROUP.findall(run)
        if _DASHED_DATE.fullmatch(run) or all(len(group) <= 2 for group in groups):
            continue
        yield "".join(groups)


def echoes(question: str, reply: str, known: Collection[str]) -> list[str]:
    """The words of the question that the reply repeats and that the knowledge it drew on does not use (``known``:
    the :func:`word_forms` of its passages and of the store's rules), as word forms: what the shopper told us about
    themselves or their case (a child's name or age, a gift card's code, a condition, an address, a gift message)
    rather than what the store knows.

    A semantic hit whose question lacks one of them is refused (AnswerCache): that reply would repeat to the new
    shopper words they never said, another shopper's (found by a review, session 22: "My son Oliver has a severe
    peanut allergy, is the chocolate cake safe for him?" served "As Oliver has…" to a plain question about peanut
    allergies; a gift card's code to "How do I redeem my gift card?"). The passages the answer drew on, not the
    whole knowledge: a catalogue uses "toddler" and "baby" somewhere, which did not make them the store's words in
    an answer about a cake (a second review). The exact tier needs no such check: its question has the same words.
    Courtesies and function words are no such words."""
    question, reply = _compatible(question), _compatible(reply)
    repeated = word_forms([reply])
    told = _said_of_the_asker(reply)
    return sorted(
        {
            form
            for word in guards.words(question)
            if word not in guards.FUNCTION_WORDS
            and word not in _COURTESIES
            and (form := _form(word)) in repeated
            and (form not in known or form in told)
        }
    )


# "you're …", "your …": what follows is said of the asker, even in the store's words ("As you're vegan and coeliac",
# "your toddler"): a reply telling another shopper that is about someone else.
_OF_THE_ASKER = re.compile(r"\b(?:you['\u2019]re|you\s+are|your|you['\u2019]ve|you\s+have)\b([^.,;:!?\n]{0,60})")


# Words that end what a reply says of the asker ("your order after…", "your own", "you're in luck").
_PHRASE_ENDS = """
after before until during in into within without over under through not this these those all own first next last
new current one other very from at on for by to with than as if when while because so but
"""
_ENDS_PHRASE = frozenset(_PHRASE_ENDS.split())


def _said_of_the_asker(reply: str) -> set[str]:
    """The forms of up to two content words after each "you're"/"your" of the reply, up to the end of the phrase
    ("you're vegan and coeliac", "your toddler has a severe…", "your order" of "your order after placing it")."""
    told: set[str] = set()
    for phrase in _OF_THE_ASKER.findall(reply.lower()):
        said: list[str] = []
        for word in guards.words(phrase):
            if word in _ENDS_PHRASE or len(said) == 2:
                break
            if word not in guards.FUNCTION_WORDS:
                said.append(_form(word))
        told.update(said)
    return told


def lacks_echoes(question: str, echoed: Sequence[str]) -> bool:
    """Whether ``question`` lacks a word another question's reply repeated from it (see :func:`echoes`)."""
    return bool(echoed) and not set(echoed) <= word_forms([_compatible(question)])


def word_forms(texts: Iterable[str]) -> set[str]:
    """The forms of the words of ``texts`` that :func:`echoes` compares (function words left out)."""
    return {_form(word) for text in texts for word in guards.words(text) if word not in guards.FUNCTION_WORDS}


def _form(word: str) -> str:
    """One form for a word's inflections: groceries and grocery, cancelling and cancel, takes and take."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    form = guards.stem(word)
    if len(form) > 3 and form[-1] == form[-2] and form[-1].isalpha():  # cancell -> cancel, shipp -> ship
        form = form[:-1]
    return form


def _opens_item(reply: str, at: int) -> bool:
    """The word at ``at`` opens an item of a list ("- Standard", "1. Express"): what the store offers, item by item."""
    return _LIST_ITEM.fullmatch(reply[:at].rsplit("\n", 1)[-1]) is not None


def _compatible(text: str) -> str:
    """``text`` in Unicode's compatibility form (NFKC: "Jane" typed with a full-width keyboard is "Jane"), as the
    exact tier's key reads it (cache.keys.normalize): the rules about whose an answer is read what the key reads."""
    return unicodedata.normalize("NFKC", text)


def _folded(word: str) -> str:
    return word.replace("\u2019", "'").casefold().removesuffix("'s")


@lru_cache(maxsize=1024)  # a pure function of the text; repeated questions are what a cache serves
def is_personal(message: str) -> bool:
    """A question whose answer depends on who asks; it must never be served to another owner."""
    message = _compatible(message)
    text = " " + message.lower().replace("\u2019", "'")
    if ("@" in text and _EMAIL.search(text)) or (_DIGIT.search(text) and _identifying_number(text)):
        return True
    if _MY_NAME.search(text) or _introduces(message.replace("\u2019", "'")):
        return True
    if _OWN_STATE.search(text):
        return True
    asked = _HOW_TO.sub(";", text)
    return bool(_OWN_REQUEST.search(asked) or _OWN_DATA.search(asked))


def _introduces(message: str) -> bool:
    """The shopper says who they are ("This is Jane", "Student Jane here."), not "It's Black Friday" or "Student
    here": some capitalised word of the name is no word of _NOT_NAMES."""
    for match in _INTRODUCTION.finditer(message):
        words = _CAPITALISED.findall(match.group("name") or match.group("signed"))
        if any(word.lower() not in _NOT_NAMES for word in words):
            return True
    return False


def owner_scope(
    personal: bool, key_id: int | None, session_id: str, end_user: str | None = None, *, key_is_shopper: bool = True
) -> str:
    """Whose a personal answer is: the API key's (a signed-in shopper's, on ``/v1/chat``); the key's end user, when
    a key serving many shoppers names them (the OpenAI-compatible ``user`` field); else the conversation's:
    anonymous callers cannot claim a name, and a key that may serve many shoppers (``key_is_shopper`` False: the
    OpenAI-compatible route) without naming one cannot tell them apart, so its personal answer is its request's
    conversation's alone (a new one each request there)."""
    if not personal:
        return "shared"
    if end_user and key_id is not None:
        return f"user:{key_id}:" + hashlib.sha256(end_user.encode()).hexdigest()[:32]
    if key_id is None or not key_is_shopper:
        return f"session:{session_id}"
    return f"user:{key_id}"


def cacheable(
    *,
    action: str,
    grounded: bool,
    provider: str,
    error: str | None,
    last_resort: bool,
    allow_fallback: bool,
    hedged: bool = False,
) -> bool:
    """Only good answers are cached: no errors, apologies, handoffs, hedged ("we have no details of…"), ungrounded
    or fallback replies."""
    if action != "answer" or not grounded or hedged or error is not None or provider in ("none", ""):
        return False
    return allow_fallback or not last_resort
