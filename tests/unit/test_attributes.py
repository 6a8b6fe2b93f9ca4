import pytest

from distctl.attributes import ATTRIBUTES, TASKS, check_task, get_attribute
from distctl.errors import DistctlError


def test_classes_in_digit_order() -> None:
    assert ATTRIBUTES["gender"].classes == ("male", "female")
    assert ATTRIBUTES["race"].classes == (
        "white",
        "black or african american",
        "american indian or alaska native",
        "asian",
        "native hawaiian or other pacific islander",
    )
    assert ATTRIBUTES["sentiment"].classes == ("positive", "negative", "neutral")
    assert [a.k for a in ATTRIBUTES.values()] == [2, 5, 3]


def test_index_and_label() -> None:
    race = get_attribute("race")
    assert race.index("asian") == 3
    assert race.label("black or african american") == "Black or African American"
    assert race.label("native hawaiian or other pacific islander") == (
        "Native Hawaiian or Other Pacific Islander"
    )
    with pytest.raises(DistctlError) as e:
        race.index("martian")
    assert e.value.field == "class" and "allowed" in str(e.value)


def test_get_attribute_errors_name_field() -> None:
    assert get_attribute("Gender").name == "gender"
    assert get_attribute(ATTRIBUTES["race"]) is ATTRIBUTES["race"]
    with pytest.raises(DistctlError) as e:
        get_attribute("age")
    assert e.value.field == "attribute"
    assert "gender, race, sentiment" in str(e.value)


def test_tasks() -> None:
    assert TASKS == ("attribute", "story")
    assert check_task("story") == "story"
    with pytest.raises(DistctlError) as e:
        check_task("poem")
    assert e.value.field == "task" and "attribute, story" in str(e.value)
