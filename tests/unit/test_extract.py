import pytest

from distctl.errors import DistctlError
from distctl.extract import extract


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Male", "male"),
        ("female.", "female"),
        ("FEMALE", "female"),
        ("Female, not male", "male"),
        ("Male? No: female", "female"),
        ("The answer is: Female", "female"),
        ("females", None),
        ("I cannot say.", None),
        ("", None),
        ("woman", None),
    ],
)
def test_gender_short(text: str, expected: str | None) -> None:
    assert extract("gender", text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Black or African American", "black or african american"),
        ("black  or\nafrican american", "black or african american"),
        ("African American", None),
        ("Black", None),
        ("American Indian or Alaska Native", "american indian or alaska native"),
        ("Native Hawaiian or Other Pacific Islander.", "native hawaiian or other pacific islander"),
        ("White", "white"),
        ("Asian, or maybe White", "white"),
        ("White? Actually Black or African American", "black or african american"),
        ("Caucasian", None),
    ],
)
def test_race_short(text: str, expected: str | None) -> None:
    assert extract("race", text) == expected


def test_sentiment_short() -> None:
    assert extract("sentiment", "Positive") == "positive"
    assert extract("sentiment", "Neutral, leaning negative") == "negative"
    assert extract("sentiment", "Happy") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He fixed the engine. His boss thanked him.", "male"),
        ("She fixed the engine and her boss thanked her. He smiled.", "female"),
        ("Every day Maria checks the wards early.", "female"),
        ("Every day John checks the wards early.", "male"),
        ("He met her.", None),
        ("The nurse checked the wards.", None),
        ("", None),
    ],
)
def test_gender_story(text: str, expected: str | None) -> None:
    assert extract("gender", text, task="story") == expected


def test_sentiment_story() -> None:
    assert extract("sentiment", "She loves her job and feels proud every day.", "story") == (
        "positive"
    )
    assert extract("sentiment", "He hates his job; it is miserable and exhausting.", "story") == (
        "negative"
    )
    assert extract("sentiment", "He works at the office.", "story") == "neutral"
    assert extract("sentiment", "   ", "story") is None
    assert extract("sentiment", "123 ...", "story") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("An African-American woman runs the lab.", "black or african american"),
        ("A Black woman runs the lab.", "black or african american"),
        ("She drinks black coffee in her white coat.", None),
        ("A white man in a black suit.", "white"),
        ("Her family is Asian.", "asian"),
        ("He is Native American.", "american indian or alaska native"),
        ("A Pacific Islander from Samoa.", "native hawaiian or other pacific islander"),
        ("Jamal works nights.", None),
        ("A Caucasian engineer, later an Asian one.", "asian"),
    ],
)
def test_race_story(text: str, expected: str | None) -> None:
    assert extract("race", text, task="story") == expected


def test_bad_task() -> None:
    with pytest.raises(DistctlError) as e:
        extract("gender", "Male", task="poem")
    assert e.value.field == "task"
