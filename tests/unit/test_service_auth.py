"""API keys and scopes, the bind rule without keys, and keys never reaching the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from distctl.errors import DistctlError
from service.auth import Scope, check_bind, load_keys
from tests.service_support import BODY, make_settings, serve

GEN, ADMIN = "gen-key-1234", "admin-key-5678"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_from_the_variable_and_the_file(tmp_path: Path):
    file = tmp_path / "keys"
    file.write_text("# comment\n\nfile-key:admin\n")
    keys = load_keys(
        make_settings(tmp_path, api_keys=f"{GEN}:generate, {ADMIN}:ADMIN", api_keys_file=file)
    )
    assert keys.scope_of(GEN) is Scope.GENERATE
    assert keys.scope_of(ADMIN) is Scope.ADMIN
    assert keys.scope_of("file-key") is Scope.ADMIN
    assert keys.scope_of("gen-key") is None


@pytest.mark.parametrize("entry", ["secret-nocolon", ":generate", "secret-key:root"])
def test_a_bad_key_entry_is_refused_without_echoing_it(tmp_path: Path, entry: str):
    with pytest.raises(DistctlError) as caught:
        load_keys(make_settings(tmp_path, api_keys=entry))
    assert "entry 1" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_settings_never_show_a_key(tmp_path: Path):
    settings = make_settings(tmp_path, api_keys=f"{GEN}:generate")
    assert GEN not in repr(settings) and GEN not in str(settings.model_dump())


def test_without_keys_only_loopback(tmp_path: Path):
    empty = load_keys(make_settings(tmp_path))
    assert "loopback" in check_bind(make_settings(tmp_path, host="127.0.0.1"), empty)
    assert "loopback" in check_bind(make_settings(tmp_path, host="::1"), empty)
    with pytest.raises(DistctlError, match=r"refusing to bind 0\.0\.0\.0") as caught:
        check_bind(make_settings(tmp_path, host="0.0.0.0"), empty)
    assert caught.value.field == "host"
    opened = make_settings(tmp_path, host="0.0.0.0", allow_unauthenticated=True)
    assert "UNAUTHENTICATED" in check_bind(opened, empty)
    keyed = make_settings(tmp_path, host="0.0.0.0", api_keys=f"{GEN}:generate")
    assert "required" in check_bind(keyed, load_keys(keyed))


async def test_scopes(tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, api_keys=f"{GEN}:generate,{ADMIN}:admin")
    async with serve(settings) as (_, client, _engine):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        missing = await client.post("/generate", json=BODY)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (
            await client.post("/generate", json=BODY, headers=_auth("wrong"))
        ).status_code == 401
        for key in (GEN, ADMIN):
            ok = await client.post("/generate", json={**BODY, "stream": False}, headers=_auth(key))
            assert ok.status_code == 200
            assert (await client.get("/adapters", headers=_auth(key))).status_code == 200
            assert (await client.get("/targets", headers=_auth(key))).status_code == 200
        load = {"name": "absent"}
        assert (await client.post("/adapters", json=load, headers=_auth(GEN))).status_code == 403
        assert (await client.delete("/adapters/x", headers=_auth(GEN))).status_code == 403
        assert (await client.post("/adapters", json=load, headers=_auth(ADMIN))).status_code == 422
        assert (await client.delete("/adapters/x", headers=_auth(ADMIN))).status_code == 404
    assert GEN not in caplog.text and ADMIN not in caplog.text


def test_serve_refuses_an_open_public_bind(monkeypatch: pytest.MonkeyPatch):
    from service import main as serve_main

    # main() sets up JSON logging on the root logger; keep pytest's handlers as they are
    monkeypatch.setattr(serve_main, "configure_logging", lambda level: None)
    for name in ("DISTCTL_API_KEYS", "DISTCTL_API_KEYS_FILE", "DISTCTL_ALLOW_UNAUTHENTICATED"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistctlError, match="refusing to bind"):
        serve_main.main(["--host", "0.0.0.0", "--port", "0"])
