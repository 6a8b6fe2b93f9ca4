"""The service on the real engine and base model (one engine for the session, from
tests/integration/conftest.py), through httpx's ASGI transport; small n and few tokens."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from distctl.quota import prefix_bound
from service.app import create_app
from service.settings import ServiceSettings
from tests.service_support import RawStream, parse_sse

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "attribute": "gender",
    "target": "uniform",
    "occupation": "Registered nurses",
    "country": "us",
    "n": 8,
    "max_tokens": 6,
    "seed": 3,
}
GEN_KEY, ADMIN_KEY = "integration-generate-key", "integration-admin-key"


class Served:
    def __init__(self, app: Any, client: httpx.AsyncClient, engine: Any) -> None:
        self.app, self.client, self.engine = app, client, engine

    async def generate(self, **fields: Any) -> dict[str, Any]:
        """A non-streamed request; the JSON body."""
        response = await self.client.post("/generate", json={**BODY, "stream": False, **fields})
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def serve(settings, engine):
    """Build the app over the session's engine, adapters under `root`, and a client."""

    def factory(root: Path, **overrides: Any):
        service_settings = ServiceSettings(
            **{**settings.model_dump(), "adapter_root": root, **overrides}
        )
        app = create_app(service_settings, engine_factory=lambda s: engine)

        class Context:
            async def __aenter__(self) -> Served:
                self._lifespan = app.router.lifespan_context(app)
                await self._lifespan.__aenter__()
                transport = httpx.ASGITransport(app=app)
                self._client = httpx.AsyncClient(
                    transport=transport, base_url="http://test", timeout=600
                )
                return Served(app, self._client, engine)

            async def __aexit__(self, *exc: object) -> None:
                await self._client.aclose()
                await self._lifespan.__aexit__(*exc)

        return Context()

    return factory


def _root(version: Any) -> Path:
    return Path(version.path).parents[1]


async def test_a_streamed_request(serve, tmp_path: Path):
    async with serve(tmp_path / "adapters") as s:
        response = await s.client.post("/generate", json=BODY)
        assert response.status_code == 200
        events = parse_sse(response.text)
        assert [e for e, _ in events] == ["generation"] * 8 + ["summary"]
        assert sorted(d["index"] for e, d in events[:-1]) == list(range(8))
        summary = events[-1][1]
        assert summary["tally"]["n"] == 8 and summary["adapter"] is None
        assert summary["timings"]["duration_s"] > 0
        assert s.engine.get_num_unfinished_requests() == 0


async def test_exact_mode_meets_the_quota_bound(serve, tmp_path: Path):
    target = {"male": 0.25, "female": 0.75}
    async with serve(tmp_path / "adapters") as s:
        body = await s.generate(mode="exact", n=10, target=target)
    counts = Counter(g["assigned"] for g in body["generations"])
    for cls, p in target.items():
        assert abs(counts[cls] - 10 * p) <= prefix_bound(2)
    assert body["summary"]["tally"]["steered"] == 10


async def test_retries_raise_consistency(serve, tmp_path: Path):
    async with serve(tmp_path / "adapters") as s:
        once = (await s.generate(n=12, seed=11))["summary"]
        retried = (await s.generate(n=12, seed=11, retries=3))["summary"]
    # the same seed gives the same first attempts; retries only replace inconsistent ones
    assert retried["tally"]["consistency"] >= once["tally"]["consistency"]
    if once["tally"]["consistency"] < 1:
        assert retried["attempts_total"] > 12


async def test_a_request_with_an_adapter(serve, make_adapter):
    version = make_adapter("svc-gender", "gender", "attribute", "ours", "uniform")
    async with serve(_root(version)) as s:
        listed = {a["name"]: a for a in (await s.client.get("/adapters")).json()}
        assert listed["svc-gender"]["loaded"]
        body = await s.generate(adapter="svc-gender", mode="calibrated", n=6)
        summary = body["summary"]
        assert summary["adapter"]["name"] == "svc-gender"
        assert sum(summary["digit_distribution"].values()) == pytest.approx(1)
        assert all(g["assigned"] in ("male", "female") for g in body["generations"])


async def test_two_adapters_in_flight_at_once(serve, make_adapter):
    first = make_adapter("svc-a", "gender", "attribute", "ours", "uniform")
    make_adapter("svc-b", "gender", "attribute", "ours", {"male": 0.8, "female": 0.2})
    async with serve(_root(first)) as s:
        a, b = await asyncio.gather(
            s.generate(adapter="svc-a", mode="sampled", n=6),
            s.generate(adapter="svc-b", mode="exact", n=6),
        )
        assert a["summary"]["adapter"]["name"] == "svc-a"
        assert b["summary"]["adapter"]["name"] == "svc-b"
        assert s.engine.get_num_unfinished_requests() == 0


async def test_disconnect_aborts_the_engine_requests(serve, tmp_path: Path):
    async with serve(tmp_path / "adapters") as s:
        stream = RawStream(s.app, {**BODY, "n": 16, "max_tokens": 8, "mode": "exact"}).start()
        await asyncio.wait_for(stream.first_event.wait(), 600)
        stream.disconnect()
        await stream.wait(60)
        assert s.engine.get_num_unfinished_requests() == 0
        assert s.app.state.service.slots.used == 0


async def test_reload_under_load(serve, make_adapter):
    version = make_adapter("svc-reload", "gender", "attribute", "ours", "uniform")
    async with serve(_root(version)) as s:
        named = {"adapter": "svc-reload", "mode": "sampled"}
        stream = RawStream(s.app, {**BODY, **named, "n": 8}).start()
        await asyncio.wait_for(stream.first_event.wait(), 600)
        retrained = make_adapter("svc-reload", "gender", "attribute", "ours", "uniform")
        assert retrained.version == version.version + 1
        reload = await s.client.post("/adapters", json={"name": "svc-reload"})
        assert reload.status_code == 200 and reload.json()["changed"]
        await stream.wait(600)
        old = parse_sse(stream.text)[-1]
        assert old[0] == "summary" and old[1]["adapter"]["version"] == version.version
        new = await s.generate(**named, n=4)
        assert new["summary"]["adapter"]["version"] == retrained.version


async def test_auth_scopes(serve, tmp_path: Path):
    keys = f"{GEN_KEY}:generate,{ADMIN_KEY}:admin"
    async with serve(tmp_path / "adapters", api_keys=keys) as s:
        body = {**BODY, "n": 2, "stream": False}
        assert (await s.client.post("/generate", json=body)).status_code == 401
        gen = {"Authorization": f"Bearer {GEN_KEY}"}
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await s.client.post("/generate", json=body, headers=gen)).status_code == 200
        load = {"name": "absent"}
        assert (await s.client.post("/adapters", json=load, headers=gen)).status_code == 403
        assert (await s.client.post("/adapters", json=load, headers=admin)).status_code == 422
        assert (await s.client.get("/metrics")).status_code == 200
