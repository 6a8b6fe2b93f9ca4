"""The HTTP API on the fake engine: validation, streaming format, JSON bodies, disconnects,
the concurrency limit, adapters and reloads, metrics, request ids and logs."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from distctl.metrics import Tally
from distctl.quota import prefix_bound
from service.schemas import TallyModel
from tests.fakes import FakeEngine, steered_answer
from tests.service_support import (
    BODY,
    RawStream,
    make_settings,
    parse_sse,
    serve,
    write_manifest_adapter,
)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_tally_schema_is_the_tally():
    assert list(TallyModel.model_fields) == list(Tally.new("gender", {"male": 1}).to_dict())


async def test_stream_format(tmp_path: Path):
    async with serve(make_settings(tmp_path)) as (_, client, engine):
        response = await client.post("/generate", json={**BODY, "n": 6})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names == ["generation"] * 6 + ["summary"]
    generations = [data for name, data in events if name == "generation"]
    assert sorted(g["index"] for g in generations) == list(range(6))
    for count, g in enumerate(generations, start=1):
        assert set(g) == {
            "index",
            "text",
            "assigned",
            "extracted",
            "consistent",
            "attempts",
            "tally",
        }
        assert g["tally"]["n"] == count  # the running tally includes this generation
        assert g["consistent"] == (g["extracted"] == g["assigned"])
    summary = events[-1][1]
    assert set(summary) == {
        "tally",
        "adapter",
        "mode",
        "digit_distribution",
        "timings",
        "attempts_total",
    }
    assert summary["tally"] == generations[-1]["tally"]
    assert summary["adapter"] is None and summary["mode"] == "sampled"
    assert set(summary["timings"]) == {"time_to_first_s", "duration_s", "generations_per_s"}
    assert summary["attempts_total"] == 6
    assert engine.get_num_unfinished_requests() == 0


async def test_not_streamed_is_one_json_body(tmp_path: Path):
    async with serve(make_settings(tmp_path)) as (_, client, _engine):
        response = await client.post("/generate", json={**BODY, "stream": False, "mode": "plain"})
    assert response.status_code == 200
    body = response.json()
    assert len(body["generations"]) == BODY["n"]
    assert body["summary"]["tally"]["n"] == BODY["n"]
    assert all(g["assigned"] is None for g in body["generations"])
    assert body["summary"]["tally"]["steered"] == 0


async def test_exact_mode_meets_the_quota_bound(tmp_path: Path):
    target = {"male": 0.3, "female": 0.7}
    async with serve(make_settings(tmp_path)) as (_, client, _engine):
        response = await client.post(
            "/generate", json={**BODY, "mode": "exact", "n": 17, "target": target, "stream": False}
        )
    counts = Counter(g["assigned"] for g in response.json()["generations"])
    for cls, p in target.items():
        assert abs(counts[cls] - 17 * p) <= prefix_bound(2)


async def test_calibrated_reports_the_digit_distribution(tmp_path: Path):
    settings = make_settings(tmp_path)
    write_manifest_adapter(settings.adapters_path, "g")
    async with serve(settings) as (_, client, engine):
        response = await client.post("/generate", json={**BODY, "mode": "calibrated"})
        summary = parse_sse(response.text)[-1][1]
    assert summary["adapter"] == {"name": "g", "version": 1, "method": "ours"}
    assert summary["digit_distribution"] == pytest.approx({"male": 0.5, "female": 0.5})
    loras = {lora.lora_name for _, _, lora in engine.requests}
    assert loras == {"g@v1"}


def _flaky(prompt: str, lora: Any, rng: random.Random) -> str:
    """Half of the answers express no class at all."""
    return steered_answer(prompt, lora, rng) if rng.random() < 0.5 else "Unsure"


async def test_retries_raise_consistency_and_count_every_attempt(tmp_path: Path):
    body = {**BODY, "n": 16, "stream": False}
    async with serve(make_settings(tmp_path), FakeEngine(respond=_flaky)) as (_, client, _e):
        before = _metric(
            "distctl_generations_total",
            adapter="base",
            attribute="gender",
            mode="sampled",
            **{"class": "invalid"},
        )
        plain = (await client.post("/generate", json=body)).json()["summary"]
        retried = (await client.post("/generate", json={**body, "retries": 8})).json()["summary"]
        after = _metric(
            "distctl_generations_total",
            adapter="base",
            attribute="gender",
            mode="sampled",
            **{"class": "invalid"},
        )
    assert plain["tally"]["consistency"] < 0.9
    assert retried["tally"]["consistency"] > plain["tally"]["consistency"]
    assert retried["attempts_total"] > 16
    # Prometheus counts every attempt, the tally only each index's final one
    invalid_tallied = plain["tally"]["invalid"] + retried["tally"]["invalid"]
    assert after - before == plain["attempts_total"] + retried["attempts_total"] - 32 + (
        invalid_tallied
    )


BAD_FIELDS = [
    ({"attribute": "colour"}, "attribute"),
    ({"target": "skewed"}, "target"),
    ({"target": {"male": True}}, "target"),
    ({"target": {"male": 0.2, "female": 0.2}}, "target"),
    ({"attribute": "race", "target": "real_world"}, "target"),
    ({"n": 0}, "n"),
    ({"n": 101}, "n"),
    ({"mode": "best"}, "mode"),
    ({"country": "fr"}, "country"),
    ({"occupation": "Astronaut"}, "occupation"),
    ({"occupation": None}, "occupation"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "Hello"}, "prompt"),
    ({"task": "poem"}, "task"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"retries": -1}, "retries"),
    ({"mode": "plain", "retries": 1}, "retries"),
    ({"seed": -5}, "seed"),
    ({"adapter": "nope"}, "adapter"),
    ({"mode": "calibrated"}, "adapter"),
    ({"colour": "blue"}, "colour"),
]


async def test_every_bad_field_is_a_422_naming_it_and_starts_nothing(tmp_path: Path):
    async with serve(make_settings(tmp_path)) as (app, client, engine):
        for fields, field in BAD_FIELDS:
            response = await client.post("/generate", json={**BODY, **fields})
            assert response.status_code == 422, (fields, response.text)
            detail = response.json()["detail"]
            assert detail[0]["loc"][:2] == ["body", field], (fields, detail)
            assert detail[0]["msg"] and detail[0]["type"]
        assert engine.requests == [] and engine.get_num_unfinished_requests() == 0
        assert app.state.service.slots.used == 0


async def test_disconnect_aborts_every_engine_request(tmp_path: Path):
    engine = FakeEngine(step_delay=0.05, chunks=40)
    settings = make_settings(tmp_path)
    async with serve(settings, engine) as (app, _client, _engine):
        in_flight = _metric("distctl_requests_in_flight")
        stream = RawStream(app, {**BODY, "mode": "exact", "n": 4}).start()
        await asyncio.wait_for(_running(engine), 10)
        assert engine.get_num_unfinished_requests() == 2  # one request per class
        stream.disconnect()
        await stream.wait()
        assert engine.get_num_unfinished_requests() == 0
        assert len(engine.aborted) == 2
        assert app.state.service.slots.used == 0
        assert _metric("distctl_requests_in_flight") == in_flight


async def test_disconnect_aborts_a_not_streamed_request_too(tmp_path: Path):
    engine = FakeEngine(step_delay=0.05, chunks=40)
    async with serve(make_settings(tmp_path), engine) as (app, _client, _engine):
        stream = RawStream(app, {**BODY, "stream": False}).start()
        await asyncio.wait_for(_running(engine), 10)
        stream.disconnect()
        await stream.wait()
        assert stream.status == 499
        assert engine.get_num_unfinished_requests() == 0 and engine.aborted
        assert app.state.service.slots.used == 0


async def _running(engine: FakeEngine) -> None:
    while not engine.running:
        await asyncio.sleep(0.01)


async def test_the_concurrency_limit_answers_429(tmp_path: Path):
    engine = FakeEngine(step_delay=0.05, chunks=40)
    async with serve(make_settings(tmp_path, max_concurrent=1), engine) as (app, client, _e):
        stream = RawStream(app, BODY).start()
        await asyncio.wait_for(_running(engine), 10)
        refused = await client.post("/generate", json=BODY)
        assert refused.status_code == 429
        assert "too many concurrent requests" in refused.json()["detail"]
        stream.disconnect()
        await stream.wait()
        engine.step_delay = 0
        assert (await client.post("/generate", json=BODY)).status_code == 200


async def test_an_engine_error_mid_stream_is_an_error_event(tmp_path: Path):
    def broken(prompt: str, lora: Any, rng: random.Random) -> str:
        raise RuntimeError("engine died")

    async with serve(make_settings(tmp_path), FakeEngine(respond=broken)) as (app, client, e):
        response = await client.post("/generate", json=BODY)
        events = parse_sse(response.text)
        assert events[-1][0] == "error"
        assert events[-1][1] == {"message": "generation failed (RuntimeError)"}
        assert e.get_num_unfinished_requests() == 0
        assert app.state.service.slots.used == 0


async def test_reload_under_load_finishes_on_the_old_version(tmp_path: Path):
    settings = make_settings(tmp_path)
    write_manifest_adapter(settings.adapters_path, "g")
    engine = FakeEngine(step_delay=0.05, chunks=10)
    async with serve(settings, engine) as (app, client, _e):
        old_id = app.state.service.registry.get("g").adapter.lora_id
        stream = RawStream(app, {**BODY, "n": 4}).start()
        await asyncio.wait_for(_running(engine), 10)
        write_manifest_adapter(settings.adapters_path, "g")  # retrained: v2
        reload = await client.post("/adapters", json={"name": "g"})
        assert reload.status_code == 200
        assert reload.json()["previous_version"] == 1 and reload.json()["changed"]
        new_id = app.state.service.registry.get("g").adapter.lora_id
        assert new_id != old_id
        assert set(engine.loras) == {old_id, new_id}  # the old one serves its last request
        await stream.wait()
        summary = parse_sse(stream.text)[-1]
        assert summary[0] == "summary" and summary[1]["adapter"]["version"] == 1
        assert set(engine.loras) == {new_id}
        engine.step_delay = 0
        response = await client.post("/generate", json=BODY)
        assert parse_sse(response.text)[-1][1]["adapter"]["version"] == 2
        assert {lora.lora_name for _, _, lora in engine.requests[-2:]} == {"g@v2"}
        unchanged = await client.post("/adapters", json={"name": "g"})
        assert unchanged.json()["changed"] is False


async def test_adapter_endpoints(tmp_path: Path):
    settings = make_settings(tmp_path)
    path = write_manifest_adapter(settings.adapters_path, "g")
    async with serve(settings) as (_, client, engine):
        from distctl.manifest import append_eval

        append_eval(path, {"mae": 0.04})
        listed = (await client.get("/adapters")).json()
        assert [(a["name"], a["loaded"], a["eval_mae"]) for a in listed] == [("g", True, 0.04)]
        assert listed[0]["target"]["kind"] == "uniform"
        deleted = await client.delete("/adapters/g")
        assert deleted.status_code == 200 and not deleted.json()["loaded"]
        assert engine.loras == {}
        assert (await client.delete("/adapters/g")).status_code == 404
        listed = (await client.get("/adapters")).json()
        assert [(a["name"], a["loaded"]) for a in listed] == [("g", False)]
        missing = await client.post("/adapters", json={"name": "absent"})
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "name"]
        failures = _metric("distctl_adapter_loads_total", outcome="failure")
        assert failures >= 1
        assert (await client.post("/adapters", json={"name": "g"})).status_code == 200


async def test_targets_health_and_readiness(tmp_path: Path):
    async with serve(make_settings(tmp_path)) as (app, client, _engine):
        targets = (await client.get("/targets")).json()
        assert {a["name"] for a in targets["attributes"]} == {"gender", "race", "sentiment"}
        nurses = next(o for o in targets["occupations"] if o["title"] == "Registered nurses")
        assert nurses["real_world"]["female"] > 0.8
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"ready": True, "adapters_loaded": 0}
        assert _metric("distctl_engine_ready") == 1
        app.state.service.engine.errored = True
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.post("/generate", json=BODY)).status_code == 503
    assert _metric("distctl_engine_ready") == 0


async def test_metrics_count_generations_and_start_at_zero(tmp_path: Path):
    labels = {"adapter": "base", "attribute": "gender", "mode": "exact"}
    async with serve(make_settings(tmp_path)) as (_, client, _engine):
        text = (await client.get("/metrics")).text
        # known label values exist before any traffic
        assert 'distctl_requests_total{status="429"}' in text
        assert 'distctl_adapter_loads_total{outcome="failure"}' in text
        assert 'distctl_steering_total{adapter="base",attribute="race",mode="sampled",' in text
        match = _metric("distctl_steering_total", outcome="match", **labels)
        mass = _metric("distctl_target_mass_total", **labels, **{"class": "female"})
        ok = _metric("distctl_requests_total", status="200")
        maes = _metric("distctl_request_mae_count", **labels)
        response = await client.post("/generate", json={**BODY, "mode": "exact", "n": 10})
        assert response.status_code == 200
        assert _metric("distctl_steering_total", outcome="match", **labels) == match + 10
        assert _metric("distctl_target_mass_total", **labels, **{"class": "female"}) == (
            pytest.approx(mass + 5)
        )
        assert _metric("distctl_requests_total", status="200") == ok + 1
        assert _metric("distctl_request_mae_count", **labels) == maes + 1
        assert _metric("distctl_request_duration_seconds_count", mode="exact") >= 1


async def test_request_ids_and_one_log_line_per_request(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="distctl.service.access")
    async with serve(make_settings(tmp_path)) as (_, client, _engine):
        response = await client.post(
            "/generate", json={**BODY, "stream": False}, headers={"X-Request-ID": "abc-123"}
        )
    assert response.headers["x-request-id"] == "abc-123"
    lines = [r for r in caplog.records if r.name == "distctl.service.access"]
    fields = lines[-1].fields
    assert fields["request_id"] == "abc-123" and fields["status"] == 200
    assert fields["mode"] == "sampled" and fields["n"] == BODY["n"]
    assert fields["adapter"] is None and fields["mae"] == response.json()["summary"]["tally"]["mae"]
    assert fields["outcome"] == "completed" and fields["duration_s"] > 0


class _Pass1Fails(FakeEngine):
    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kw: Any):
        if sampling_params.logprob_token_ids:
            raise ValueError("pass 1 refused")
        async for output in super().generate(prompt, sampling_params, request_id, **kw):
            yield output


async def test_a_failed_pass_1_frees_everything(tmp_path: Path):
    settings = make_settings(tmp_path)
    write_manifest_adapter(settings.adapters_path, "g")
    async with serve(settings, _Pass1Fails()) as (app, client, _engine):
        streamed = await client.post("/generate", json={**BODY, "mode": "calibrated"})
        assert parse_sse(streamed.text)[-1] == (
            "error",
            {"message": "generation failed (ValueError)"},
        )
        with pytest.raises(ValueError):  # the test client re-raises what became a 500
            await client.post("/generate", json={**BODY, "mode": "calibrated", "stream": False})
        assert app.state.service.slots.used == 0
        assert app.state.service.registry.get("g").users == 0
