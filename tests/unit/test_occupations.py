import csv
from pathlib import Path

import pytest

from distctl.errors import DistctlError
from distctl.occupations import COUNTRIES, country_label, get_occupation, occupations

REPO = Path(__file__).resolve().parents[2]


def _shared_folder() -> Path | None:
    for candidate in (
        Path("/work/shared/data/occupations"),
        REPO.parent / "shared/data/occupations",
    ):
        if candidate.is_dir():
            return candidate
    return None


def test_table_sizes_and_units() -> None:
    assert COUNTRIES == ("uk", "us")
    uk, us = occupations("uk"), occupations("us")
    assert len(uk) == 25 and len(us) == 14
    assert {o.unit for o in uk} == {"employee jobs"}
    assert {o.unit for o in us} == {"thousands of workers"}
    assert all(o.source.startswith("ONS") for o in uk)
    assert all(o.source.startswith("BLS") for o in us)
    assert len({o.title for o in uk}) == 25


def test_real_world_share() -> None:
    nurses = get_occupation("us", "registered nurses")
    assert (nurses.male, nurses.female) == (404, 2413)
    target = nurses.real_world()
    assert target["male"] == pytest.approx(404 / 2817)
    assert target["male"] + target["female"] == pytest.approx(1.0)


def test_lookup_is_case_and_space_insensitive() -> None:
    assert get_occupation("UK", "  civil   ENGINEERS ").title == "Civil engineers"
    assert country_label("uk") == "UK" and country_label("us") == "US"


def test_lookup_errors_name_the_field() -> None:
    with pytest.raises(DistctlError) as e:
        get_occupation("uk", "Astronauts")
    assert e.value.field == "occupation" and "Civil engineers" in str(e.value)
    with pytest.raises(DistctlError) as e:
        occupations("fr")
    assert e.value.field == "country" and "uk, us" in str(e.value)


@pytest.mark.skipif(_shared_folder() is None, reason="shared occupation data not present")
@pytest.mark.parametrize(
    ("country", "filename"), [("uk", "uk_shortlist.csv"), ("us", "us_shortlist.csv")]
)
def test_table_matches_shared_reference(country: str, filename: str) -> None:
    folder = _shared_folder()
    assert folder is not None
    with open(folder / filename, newline="") as f:
        reference = [
            (
                r["occupation_title"],
                r["classification"],
                int(r["male_count"]),
                int(r["female_count"]),
            )
            for r in csv.DictReader(f)
        ]
    ours = [(o.title, o.sector, o.male, o.female) for o in occupations(country)]
    assert sorted(ours) == sorted(reference)
