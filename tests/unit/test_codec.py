import pytest

from distctl.codec import SteeringCodec
from distctl.errors import DistctlError


class FakeTokenizer:
    """Single characters are single tokens, except where `split` says otherwise."""

    name_or_path = "fake-tok"

    def __init__(self, split: frozenset[str] = frozenset(), alias: dict[str, int] | None = None):
        self.split = split
        self.alias = alias or {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        if text in self.split:
            return [1000, ord(text)]
        return [self.alias.get(ch, ord(ch)) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def test_digits_and_ids() -> None:
    codec = SteeringCodec(FakeTokenizer(), "race")
    assert codec.digits == ("0", "1", "2", "3", "4")
    assert codec.token_ids == tuple(ord(d) for d in "01234")
    assert codec.digit("asian") == "3" and codec.token_id("white") == ord("0")
    assert codec.class_of_digit("1") == "black or african american"
    assert codec.class_of_digit("5") is None and codec.class_of_digit("") is None


def test_split() -> None:
    codec = SteeringCodec(FakeTokenizer(), "gender")
    assert codec.split("1 Female") == ("female", "Female")
    assert codec.split("  0Male") == ("male", "Male")
    assert codec.split("2 Male") == (None, "2 Male")
    assert codec.split("Male") == (None, "Male")
    assert codec.split("") == (None, "")


def test_refuses_multi_token_digit() -> None:
    with pytest.raises(DistctlError, match="fake-tok") as e:
        SteeringCodec(FakeTokenizer(split=frozenset({"1"})), "gender")
    assert e.value.field == "tokenizer"


def test_refuses_shared_ids() -> None:
    with pytest.raises(DistctlError, match="same token id"):
        SteeringCodec(FakeTokenizer(alias={"0": 7, "1": 7}), "gender")
