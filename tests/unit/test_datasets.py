import pytest

from distctl.datasets import DATASETS, get_dataset
from distctl.errors import DistctlError


def test_six_datasets() -> None:
    assert list(DATASETS) == [
        "gender-uk-real",
        "gender-uk-uniform",
        "gender-us-real",
        "gender-us-uniform",
        "race-us-uniform",
        "sentiment-us-uniform",
    ]
    sizes = {name: len(d.occupations()) for name, d in DATASETS.items()}
    assert sizes["gender-uk-real"] == sizes["gender-uk-uniform"] == 25
    assert sizes["race-us-uniform"] == sizes["sentiment-us-uniform"] == 14


def test_targets_per_occupation() -> None:
    real = get_dataset("gender-us-real")
    nurses = real.occupations()[-1]
    assert real.target_for(nurses)["female"] == pytest.approx(2413 / 2817)
    assert real.target_for("Registered nurses") == real.target_for(nurses)
    race = get_dataset("race-us-uniform")
    assert race.target_for("Software developers") == pytest.approx(
        {
            c: 0.2
            for c in (
                "white",
                "black or african american",
                "american indian or alaska native",
                "asian",
                "native hawaiian or other pacific islander",
            )
        }
    )


def test_unknown_dataset() -> None:
    with pytest.raises(DistctlError) as e:
        get_dataset("race-uk-real")
    assert e.value.field == "dataset" and "gender-uk-real" in str(e.value)
