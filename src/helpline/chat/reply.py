"""Reply post-checks: strip and parse the control line, detect handoff phrasing, keep only real citations.

Streaming-safe: :class:`ControlLineFilter` passes text through as it arrives but holds back anything that could
be the start of the control line, so the shopper never sees ``<<ACTION=...>>``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from helpline.knowledge.base import Passage
from helpline.providers.base import Action, Citation

MARKER = "<<"
_CONTROL = re.compile(r"<<\s*ACTION\s*=\s*(answer|handoff)\s*;?\s*(?:SOURCES\s*=\s*([^>]*))?>>\s*$", re.IGNORECASE)
_CONTROL_ANYWHERE = re.compile(r"<<\s*ACTION\s*=[^<>]*>>", re.IGNORECASE)
# What the filter holds back at the end of a reply: control lines (a model may repeat its line), the last perhaps
# unfinished (anything from "<<" on, without the closing ">>" yet), or a lone "<".
_UNFINISHED = re.compile(r"<<[^<>]*>?")
_WORD = re.compile(r"[^\W_]")  # a letter or a digit, in any script
# Typographic apostrophes and primes, as in "I\u2019m not sure" (a phone's keyboard, most models' output).
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2018\u2019\u02bc\u2032\uff07", "'"))
_HANDOFF_PHRASES = re.compile(
    r"\b(?:i(?:'m| am) not sure|i (?:do not|don't) (?:know|have (?:any |that |this )?information)|"
    # an apology for not answering ("Sorry, I could not find any information about that.") is not an answer
    r"i (?:could not|couldn't|can't|cannot|was unable to|am unable to) (?:find|help|answer)|i(?:'m| am) unable to|"
    r"(?:a|one of our) (?:person|member of (?:our|the) (?:support )?team|colleague|human)[^.]{0,40}"
    r"(?:will|shall|can) (?:follow up|get back|contact))",
    re.IGNORECASE,
)
# Wordings of "I have nothing on that" a review found cached as answers (session 18). They also occur in real answers
# ("we cannot help with custom cakes", "our couriers cannot help with installation", "there's no information
# needed from you"),
# so a reply using one is never cached, and is a handoff only when it cites none of the passages it was given.
_HEDGES = re.compile(
    r"\b(?:(?:do not|don't|does not|doesn't) have (?:any |the |that |this |those )?(?:information|info|details)|"
    r"(?:there is|there's|we have|i have|i've got|i found) no (?:information|info|details)|"
    r"(?:that|this|the|such) (?:information|info|detail)s? (?:is not|isn't|are not|aren't) available|"
    r"(?:i(?:'m| am)|we(?:'re| are)) not able to (?:answer|help|find|say)|"
    r"(?:isn't|is not|not) something (?:i|we) can (?:answer|help)|"
    r"(?:can't|cannot|can not|could not|couldn't|am unable to|are unable to) (?:help|answer|assist)(?: you)? with|"
    # What the model was given says nothing on it. Only the words a model uses for its passages: "our policy does
    # not cover accidental damage", "the catalogue doesn't include alcohol" are answers (the next review).
    r"(?:passages?|help pages|faq|information (?:i have|provided|given)) "
    r"(?:do not|don't|does not|doesn't) (?:cover|say|mention|include|contain|answer|specify)|"
    r"(?:sources?|documents?) (?:do not|don't|does not|doesn't) (?:cover|say|mention|specify)|"
    r"(?:policy|policies) (?:do not|don't|does not|doesn't) (?:say|specify)|"
    # more, from the next review (session 19): in the first person, the assistant's (not "we cannot provide
    # details of your card over chat", "if you don't have enough information on the label")
    r"i (?:do not|don't) have enough (?:information|info|details)|no (?:information|info) is available|"
    r"i (?:can't|cannot|can not) (?:say|provide (?:any )?(?:details|information|info))|"
    # the assistant unable to look something up (session 26: "Unfortunately, I can't check that for you.")
    r"i(?:'m| am)? (?:can't|cannot|can not|could not|couldn't|unable to|not able to) "
    r"(?:check|look|access|see|view|confirm|verify|tell))",
    re.IGNORECASE,
)
# The same in the other languages shoppers write in (the model answers in theirs): "I don't know", "I have no
# information", "I can't help / check / see", "I'm not sure". A review found "Lo siento, no tengo información sobre
# eso" cached as an answer (session 26). Like _HEDGES: never cached, a handoff when it cites nothing.
_HEDGES_ELSEWHERE = re.compile(
    # Spanish
    r"\bno (?:tengo|dispongo de|encuentro|encontré|hay) (?:ninguna |suficiente )?información|\bno (?:lo )?sé\b|"
    r"\bno (?:puedo|pude) (?:ayudar|responder|ver|consultar|comprobar|acceder|encontrar|confirmar)|"
    r"\bno estoy segur[oa]|"
    # French
    r"\bje ne (?:sais|peux) pas|\bje n'ai pas (?:d'|de |les |la |l')?(?:informations?|détails|renseignements)|"
    r"\bje ne suis pas (?:sûre?|certaine?)|\bje n'ai aucune (?:information|précision)|"
    # German (not a bare "keine Informationen": "Wir geben keine Informationen an Dritte weiter" is an answer)
    r"\bich weiß (?:es |das )?nicht|\b(?:ich habe|habe ich|liegen mir) (?:dazu |leider |hierzu )*keine "
    r"(?:informationen|angaben|details)|\bich bin (?:mir )?nicht sicher|"
    r"\bich kann (?:ihnen |dir |das |es |leider |hier )*nicht "
    r"(?:helfen|beantworten|sagen|prüfen|sehen|einsehen|finden)|"
    # Italian
    r"\bnon (?:ho|dispongo di|trovo) (?:alcuna |nessuna )?(?:informazion[ei]|dettagli)|\bnon (?:lo )?so\b|"
    r"\bnon posso (?:aiutar|risponder|veder|verificar|controllar|acceder)|\bnon sono sicur[oa]|"
    # Portuguese
    r"\bnão (?:tenho|encontro|encontrei|há) (?:nenhuma )?informaç|\bnão sei\b|"
    r"\bnão (?:posso|consigo) (?:ajudar|responder|ver|verificar|acessar|aceder|encontrar)|\bnão tenho certeza|"
    # Dutch
    r"\bik weet (?:het )?niet|\b(?:dat|het) weet ik niet|\b(?:ik heb|heb ik) (?:daar |helaas |hier )*geen "
    r"informatie|\bik ben (?:er )?niet zeker|"
    r"\bik kan (?:u |je |dat |het |daar |daarmee |er |helaas )*niet (?:helpen|beantwoorden|zien|controleren|vinden)",
    re.IGNORECASE,
)


class ControlLineFilter:
    """Feed deltas; get back the text that is safe to show now. ``finish()`` returns the rest and the control."""

    def __init__(self) -> None:
        self._held = ""
        self.visible = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        cut = _held_from(text)
        if cut == -1:
            self._held = ""
        else:
            text, self._held = text[:cut], text[cut:]
        # Trailing whitespace waits for what follows: before the control line it is not the reply's (a stream showed
        # "…days.\n", its replay from the cache "…days.").
        shown = text.rstrip()
        if len(shown) < len(text):
            text, self._held = shown, text[len(shown) :] + self._held
        self.visible += text
        return text

    def finish(self) -> tuple[str, str]:
        """(remaining visible text, raw control line or '')."""
        held, self._held = self._held, ""
        if _CONTROL.search(held.strip()):
            return "", held.strip()
        self.visible += held
        return held, ""


def _held_from(text: str) -> int:
    """Where the control lines at the end of ``text`` begin, the last perhaps unfinished (-1: none). Every one of
    them: a model that wrote its line twice showed the first to the shopper (review, session 26). Read from the end,
    each character once."""
    cut = end = len(text)
    last = text.rfind(MARKER)
    if last != -1 and _UNFINISHED.fullmatch(text, last):
        cut = end = last
    elif text.endswith("<"):
        cut = end = len(text) - 1
    while True:  # complete control lines before it, whitespace between
        stop = end
        while stop and text[stop - 1].isspace():
            stop -= 1
        start = text.rfind(MARKER, 0, stop)
        if start == -1 or not _CONTROL_ANYWHERE.fullmatch(text, start, stop):
            return -1 if cut == len(text) else cut
        cut = end = start


@dataclass(frozen=True, slots=True)
class ParsedReply:
    text: str
    action: Action
    citations: tuple[Citation, ...]
    grounded: bool  # cites at least one passage we gave it (or is a handoff)
    had_control_line: bool
    blocked: bool = False  # replaced because it quoted our rules
    hedged: bool = False  # says it has nothing on part of the question (see _HEDGES): shown, never cached


def parse_reply(raw: str, passages: tuple[Passage, ...]) -> ParsedReply:
    """The shopper-facing text, the action and the citations of a complete reply."""
    text, control = _split_control(raw)
    action: Action = "answer"
    cited: list[str] = []
    if control:
        match = _CONTROL.search(control)
        if match:
            action = "handoff" if match.group(1).lower() == "handoff" else "answer"
            cited = [part.strip().strip("[]") for part in (match.group(2) or "").split(",") if part.strip()]
    if action == "answer" and looks_like_handoff(text):
        action = "handoff"
    known = {p.id: p for p in passages}
    citations = tuple(dict.fromkeys(Citation(i, known[i].title) for i in cited if i in known))
    hedged = action == "answer" and hedges(text)
    if hedged and not citations:
        action = "handoff"
    if action == "handoff":
        citations = ()
    # A reply without a word in it ("…") says nothing, whatever it cites: never an answer to cache (review,
    # session 26; the router takes one for an empty reply and asks the next provider).
    grounded = action == "handoff" or (bool(citations) and has_words(text))
    return ParsedReply(text.strip(), action, citations, grounded, bool(control), hedged=hedged)


def _split_control(raw: str) -> tuple[str, str]:
    """(the reply, its control line): the last of the control lines it ends with. Any other one, anywhere in it
    (a model that repeated its line, or wrote one and went on), leaves the reply too."""
    stripped = raw.rstrip()
    cut = _held_from(stripped)
    control = ""
    if cut != -1:
        last = stripped.rfind(MARKER)
        if _CONTROL.search(stripped[last:]):
            stripped, control = stripped[:cut], stripped[last:]
    return _CONTROL_ANYWHERE.sub("", stripped), control


def has_words(text: str) -> bool:
    """Whether ``text`` has a letter or a digit: a reply of dots, spaces or symbols says nothing."""
    return _WORD.search(text) is not None


def ends_with_control(text: str) -> bool:
    """Whether ``text`` ends with a complete control line: the model wrote its whole reply (the line comes last)."""
    stripped = text.rstrip()
    last = stripped.rfind(MARKER)
    return last != -1 and _CONTROL.search(stripped[last:]) is not None


_WORDS = re.compile(r"[a-z0-9]+")
SHINGLE = 7  # a run of this many words of our rules in a reply means the model is quoting them
BLOCKED_REPLY = (
    "I can only help with questions about our shop, your orders and our products. "
    "A member of our support team will follow up if you need anything else."
)


class PromptLeakGuard:
    """Spots a reply that quotes the system rules (a successful prompt-injection), as a whole or as it streams."""

    def __init__(self, secret_text: str) -> None:
        words = _WORDS.findall(secret_text.lower())
        self._shingles = {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}

    def leaks(self, text: str) -> bool:
        words = _WORDS.findall(text.lower())
        return any(tuple(words[i : i + SHINGLE]) in self._shingles for i in range(len(words) - SHINGLE + 1))


def strip_control(raw: str) -> str:
    """The reply without its control line."""
    return _split_control(raw)[0]


def _plain(text: str) -> str:
    """The text as the phrase lists are written: NFKC (full-width letters), straight apostrophes."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)


def looks_like_handoff(text: str) -> bool:
    """Model text that defers to a person, whatever action it declared."""
    return bool(_HANDOFF_PHRASES.search(_plain(text)))


def hedges(text: str) -> bool:
    """Model text that says it has nothing on (part of) the question, in English or another language shoppers
    write in; an answer only if it cites a passage."""
    plain = _plain(text)
    return bool(_HEDGES.search(plain) or _HEDGES_ELSEWHERE.search(plain))
