"""openapi.yaml is generated from the app (`python -m service.openapi`); it must not drift."""

from __future__ import annotations

import yaml

from service.openapi import DEFAULT_PATH, schema


def test_openapi_yaml_matches_the_app():
    on_disk = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert on_disk == schema(), "openapi.yaml is stale: run `python -m service.openapi`"


def test_the_schema_documents_the_api():
    paths = schema()["paths"]
    assert set(paths) == {
        "/generate",
        "/adapters",
        "/adapters/{name}",
        "/targets",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    request = schema()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert request["mode"]["$ref"].endswith("/Mode")
    assert "text/event-stream" in paths["/generate"]["post"]["responses"]["200"]["content"]
