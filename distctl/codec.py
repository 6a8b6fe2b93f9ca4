"""Steering tokens: the digit str(i) steers class i of an attribute."""

from typing import Protocol

from distctl.attributes import Attribute, get_attribute
from distctl.errors import DistctlError


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class SteeringCodec:
    def __init__(self, tokenizer: Tokenizer, attribute: str | Attribute) -> None:
        self.attribute = get_attribute(attribute)
        self.digits: tuple[str, ...] = tuple(str(i) for i in range(self.attribute.k))
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        ids: list[int] = []
        for digit in self.digits:
            encoded = list(tokenizer.encode(digit, add_special_tokens=False))
            if len(encoded) != 1:
                raise DistctlError(
                    f"tokenizer {name!r} encodes the steering digit {digit!r} as {len(encoded)} "
                    "tokens; steering needs each digit to be exactly one token",
                    field="tokenizer",
                )
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            raise DistctlError(
                f"tokenizer {name!r} maps different steering digits to the same token id",
                field="tokenizer",
            )
        self.token_ids: tuple[int, ...] = tuple(ids)

    def digit(self, cls: str) -> str:
        return self.digits[self.attribute.index(cls)]

    def token_id(self, cls: str) -> int:
        return self.token_ids[self.attribute.index(cls)]

    def class_of_digit(self, d: str) -> str | None:
        return self.attribute.classes[self.digits.index(d)] if d in self.digits else None

    def split(self, text: str) -> tuple[str | None, str]:
        """(class, rest) when the text starts (after optional whitespace) with a steering digit;
        (None, text) otherwise."""
        stripped = text.lstrip()
        cls = self.class_of_digit(stripped[:1])
        if cls is None:
            return None, text
        return cls, stripped[1:].lstrip()
