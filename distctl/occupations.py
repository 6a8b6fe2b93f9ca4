"""The project's occupation table: public labour-force counts by sex (data/occupations.csv)."""

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

from distctl.errors import DistctlError

COUNTRIES: tuple[str, ...] = ("uk", "us")
# How a prompt names the country ("... workforce in the UK").
COUNTRY_LABELS: dict[str, str] = {"uk": "UK", "us": "US"}


@dataclass(frozen=True)
class Occupation:
    country: str
    title: str
    sector: str
    male: int
    female: int
    unit: str
    source: str

    def real_world(self) -> dict[str, float]:
        p_male = self.male / (self.male + self.female)
        return {"male": p_male, "female": 1.0 - p_male}


def check_country(country: str) -> str:
    """The country code in lower case; DistctlError naming field "country" otherwise."""
    code = country.strip().lower() if isinstance(country, str) else None
    if code not in COUNTRIES:
        raise DistctlError(
            f"unknown country {country!r}; allowed: {', '.join(COUNTRIES)}", field="country"
        )
    return code


def country_label(country: str) -> str:
    return COUNTRY_LABELS[check_country(country)]


@functools.cache
def _table() -> tuple[Occupation, ...]:
    text = resources.files("distctl").joinpath("data/occupations.csv").read_text("utf-8")
    return tuple(
        Occupation(
            country=r["country"],
            title=r["occupation"],
            sector=r["sector"],
            male=int(r["male"]),
            female=int(r["female"]),
            unit=r["unit"],
            source=r["source"],
        )
        for r in csv.DictReader(io.StringIO(text))
    )


def occupations(country: str) -> list[Occupation]:
    code = check_country(country)
    return [o for o in _table() if o.country == code]


def _normalise(title: str) -> str:
    return " ".join(title.split()).casefold()


def get_occupation(country: str, title: str) -> Occupation:
    """Case- and whitespace-insensitive lookup of an occupation title."""
    rows = occupations(country)
    wanted = _normalise(title) if isinstance(title, str) else None
    for occupation in rows:
        if _normalise(occupation.title) == wanted:
            return occupation
    raise DistctlError(
        f"unknown occupation {title!r} for country {check_country(country)!r}; allowed: "
        + "; ".join(o.title for o in rows),
        field="occupation",
    )
