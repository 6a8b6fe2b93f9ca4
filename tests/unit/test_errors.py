from distctl.errors import DistctlError


def test_error_is_value_error_with_field() -> None:
    e = DistctlError("bad target", field="target")
    assert isinstance(e, ValueError)
    assert e.field == "target"
    assert str(e) == "bad target"


def test_field_defaults_to_none() -> None:
    assert DistctlError("x").field is None
