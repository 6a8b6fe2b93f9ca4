"""Read an attribute's class back from generated text (never from the steering digit).

Short answers ("attribute" task): whole-word, case-insensitive match of the class names; when
several classes are mentioned, the one mentioned last wins (the match that starts last; a match
inside a longer one does not count). Multi-word race classes must appear whole, with any
whitespace between the words.

Stories ("story" task):
- gender: he/him/his/himself against she/her/hers/herself, the majority wins; when pronouns do
  not decide (none, or a tie), the first capitalised word that gender-guesser knows as a male or
  female first name (not "mostly_*" or androgynous) decides, since stories name their protagonist
  early; otherwise None.
- sentiment: VADER's compound score, >= 0.05 positive, <= -0.05 negative, else neutral; only a
  text without letters has no sentiment.
- race: explicit mentions only, last one wins: the class names plus common terms ("African
  American", "Native American", "Pacific Islander", "Caucasian", ...). "white" and "black" count
  only directly before a word for a person (man, woman, American, family, ...) because alone they
  usually describe things (a white coat, black coffee). Nothing is inferred from names.
"""

import functools
import re

import gender_guesser.detector
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from distctl.attributes import Attribute, check_task, get_attribute

_PERSON_NOUNS = (
    "man|men|woman|women|person|people|american|americans|guy|guys|girl|girls|boy|boys|lady"
    "|ladies|gentleman|gentlemen|family|families|individual|individuals|worker|workers"
)

_RACE_STORY_TERMS: dict[str, tuple[str, ...]] = {
    "white": ("caucasian", rf"white(?=\s+(?:{_PERSON_NOUNS})\b)"),
    "black or african american": (
        r"african[\s-]+americans?",
        rf"black(?=\s+(?:{_PERSON_NOUNS})\b)",
    ),
    "american indian or alaska native": (
        r"american[\s-]+indians?",
        r"alaska(?:n)?[\s-]+natives?",
        r"native[\s-]+americans?",
    ),
    "asian": (r"asians?",),
    "native hawaiian or other pacific islander": (
        r"native[\s-]+hawaiians?",
        r"pacific[\s-]+islanders?",
    ),
}

_MALE_PRONOUNS = re.compile(r"\b(?:he|him|his|himself)\b", re.IGNORECASE)
_FEMALE_PRONOUNS = re.compile(r"\b(?:she|her|hers|herself)\b", re.IGNORECASE)
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")
_LETTER = re.compile(r"[^\W\d_]")


def _class_pattern(cls: str) -> str:
    return r"\s+".join(re.escape(word) for word in cls.split())


@functools.cache
def _matchers(attribute: Attribute, story: bool) -> tuple[tuple[str, re.Pattern[str]], ...]:
    matchers = []
    for cls in attribute.classes:
        if story and attribute.name == "race":
            # The bare class name "white" is too ambiguous in prose; its story terms replace it.
            terms = [*([] if cls == "white" else [_class_pattern(cls)]), *_RACE_STORY_TERMS[cls]]
        else:
            terms = [_class_pattern(cls)]
        pattern = re.compile(r"\b(?:" + "|".join(terms) + r")\b", re.IGNORECASE)
        matchers.append((cls, pattern))
    return tuple(matchers)


def _last_mention(attribute: Attribute, text: str, story: bool = False) -> str | None:
    spans = [
        (m.start(), m.end(), cls)
        for cls, pattern in _matchers(attribute, story)
        for m in pattern.finditer(text)
    ]
    # A mention inside a longer one ("american" in "black or african american") is not its own.
    whole = [
        s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and o[:2] != s[:2] for o in spans)
    ]
    if not whole:
        return None
    return max(whole, key=lambda s: (s[0], s[1]))[2]


@functools.cache
def _gender_detector() -> gender_guesser.detector.Detector:
    return gender_guesser.detector.Detector()


@functools.cache
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def _story_gender(text: str) -> str | None:
    male = len(_MALE_PRONOUNS.findall(text))
    female = len(_FEMALE_PRONOUNS.findall(text))
    if male != female:
        return "male" if male > female else "female"
    detector = _gender_detector()
    for word in _CAPITALISED.findall(text):
        guess = detector.get_gender(word)
        if guess in ("male", "female"):
            return guess
    return None


def _story_sentiment(text: str) -> str:
    compound = _vader().polarity_scores(text)["compound"]
    if compound >= 0.05:
        return "positive"
    if compound <= -0.05:
        return "negative"
    return "neutral"


def extract(attribute: str | Attribute, text: str, task: str = "attribute") -> str | None:
    """The class the text expresses, or None when it expresses none."""
    attr = get_attribute(attribute)
    check_task(task)
    if task == "attribute":
        return _last_mention(attr, text)
    if attr.name == "gender":
        return _story_gender(text)
    if attr.name == "sentiment":
        return _story_sentiment(text) if _LETTER.search(text) else None
    return _last_mention(attr, text, story=True)
