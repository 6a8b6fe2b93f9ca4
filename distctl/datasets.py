"""The paper's six evaluation datasets: an attribute, a country's occupations and a target."""

from dataclasses import dataclass
from typing import Literal

from distctl.attributes import get_attribute
from distctl.errors import DistctlError
from distctl.occupations import Occupation, get_occupation, occupations
from distctl.targets import Target, resolve_target


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    attribute: str
    country: str
    target: Literal["real_world", "uniform"]

    def occupations(self) -> list[Occupation]:
        return occupations(self.country)

    def target_for(self, occupation: str | Occupation) -> Target:
        if isinstance(occupation, str):
            occupation = get_occupation(self.country, occupation)
        return resolve_target(get_attribute(self.attribute), self.target, occupation=occupation)


DATASETS: dict[str, DatasetSpec] = {
    d.name: d
    for d in (
        DatasetSpec("gender-uk-real", "gender", "uk", "real_world"),
        DatasetSpec("gender-uk-uniform", "gender", "uk", "uniform"),
        DatasetSpec("gender-us-real", "gender", "us", "real_world"),
        DatasetSpec("gender-us-uniform", "gender", "us", "uniform"),
        DatasetSpec("race-us-uniform", "race", "us", "uniform"),
        DatasetSpec("sentiment-us-uniform", "sentiment", "us", "uniform"),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DistctlError(
            f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}", field="dataset"
        ) from None
