"""The lexical scorer: plural folding, stopwords, IDF weighting."""

from __future__ import annotations

from helpline.knowledge.lexical import LexicalScorer, stem, terms


def test_stemming_and_stopwords() -> None:
    assert [stem(w) for w in ("bananas", "berries", "boxes", "glass", "eggs")] == [
        "banana",
        "berry",
        "box",
        "glass",
        "egg",
    ]
    assert terms("Do you have any Bananas?") == ["any", "banana"]


def test_rare_shared_words_score_higher() -> None:
    scorer = LexicalScorer()
    scorer.load([("banana", "Fairtrade bananas fruit"), ("apple", "Apples fruit"), ("pear", "Pears fruit")])
    assert scorer.score("bananas please", "banana") == 1.0
    assert scorer.score("fruit bananas", "banana") > scorer.score("fruit bananas", "apple") > 0.0
    assert scorer.score("the of and", "banana") == 0.0
    scorer.remove("banana")
    assert scorer.score("bananas", "banana") == 0.0
