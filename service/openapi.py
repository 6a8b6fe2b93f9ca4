"""`python -m service.openapi [PATH]`: write the app's OpenAPI schema (default openapi.yaml
at the repository root). A unit test fails when the file and the app differ."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "openapi.yaml"


def schema() -> dict[str, Any]:
    from service.app import create_app
    from service.settings import ServiceSettings

    # defaults only (no environment, no keys file): the schema must not depend on where it
    # is generated; building the app starts no engine
    settings = ServiceSettings.model_construct()
    # a JSON round trip turns tuples and enums into what the YAML file holds
    return json.loads(json.dumps(create_app(settings).openapi()))


def render() -> str:
    return yaml.safe_dump(schema(), sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
