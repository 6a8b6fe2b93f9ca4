"""The one error type for invalid input anywhere in distctl."""


class DistctlError(ValueError):
    """Invalid input. `field` names the input field at fault, so the service can answer 422 for
    that field and the command line can print one line."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message
