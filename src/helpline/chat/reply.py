"""Reply post-checks: strip and parse the control line, detect handoff phrasing, keep only real citations.

Streaming-safe: :class:`ControlLineFilter` passes text through as it arrives but holds back anything that could
be the start of the control line, so the shopper never sees ``<<ACTION=...>>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from helpline.knowledge.base import Passage
from helpline.providers.base import Action, Citation

MARKER = "<<"
_CONTROL = re.compile(r"<<\s*ACTION\s*=\s*(answer|handoff)\s*;?\s*(?:SOURCES\s*=\s*([^>]*))?>>\s*$", re.IGNORECASE)
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
    r"i (?:can't|cannot|can not) (?:say|provide (?:any )?(?:details|information|info)))",
    re.IGNORECASE,
)


class ControlLineFilter:
    """Feed deltas; get back the text that is safe to show now. ``finish()`` returns the rest and the control."""

    def __init__(self) -> None:
        self._held = ""
        self.visible = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        cut = text.rfind(MARKER)
        if cut == -1 and text.endswith("<"):
            cut = len(text) - 1
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
    grounded = action == "handoff" or bool(citations)
    return ParsedReply(text.strip(), action, citations, grounded, bool(control), hedged=hedged)


def _split_control(raw: str) -> tuple[str, str]:
    stripped = raw.rstrip()
    cut = stripped.rfind(MARKER)
    if cut != -1 and _CONTROL.search(stripped[cut:]):
        return stripped[:cut], stripped[cut:]
    return stripped, ""


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


def looks_like_handoff(text: str) -> bool:
    """Model text that defers to a person, whatever action it declared."""
    return bool(_HANDOFF_PHRASES.search(text))


def hedges(text: str) -> bool:
    """Model text that says it has nothing on (part of) the question; an answer only if it cites a passage."""
    return bool(_HEDGES.search(text))
