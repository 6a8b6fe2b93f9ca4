"""Helpers for the service's unit tests: an app on the fake engine, adapters written to a temp
root, and an SSE parser. (A plain module, not a conftest, so other suites stay unaffected.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from distctl.manifest import Manifest, TargetRecord, write_adapter
from distctl.targets import uniform
from service.app import create_app
from service.settings import ServiceSettings
from tests.fakes import FakeEngine


def make_settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(home=tmp_path, adapter_root=tmp_path / "adapters", **overrides)


def write_manifest_adapter(
    root: Path,
    name: str,
    *,
    attribute: str = "gender",
    task: str = "attribute",
    method: str = "ours",
    target: TargetRecord | None = None,
    country: str | None = "us",
) -> Path:
    """An adapter folder holding only its manifest: the fake engine never reads PEFT files."""
    record = target or TargetRecord(kind="uniform", values=uniform(attribute))
    manifest = Manifest(
        base_model="fake",
        base_model_sha256="0" * 64,
        dataset=f"{attribute}-{country or 'us'}-{record.kind}",
        country=country,
        attribute=attribute,
        classes=[],
        digit_tokens=[],
        task=task,
        target=record,
        method=method,
        seed=0,
    )
    return write_adapter(lambda folder: None, manifest, root=root, name=name).path


@asynccontextmanager
async def serve(
    settings: ServiceSettings, engine: FakeEngine | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, FakeEngine]]:
    """The app with its lifespan running on a fake engine, and a client for it."""
    engine = engine or FakeEngine()
    app = create_app(settings, engine_factory=lambda s: engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client, engine


def parse_sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each server-sent event; comments (pings) are skipped."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if name is not None:
            events.append((name, json.loads("\n".join(data))))
    return events


BODY: dict[str, Any] = {
    "attribute": "gender",
    "target": "uniform",
    "occupation": "Registered nurses",
    "country": "us",
    "n": 8,
    "seed": 1,
}


class RawStream:
    """A streamed POST /generate driven at the ASGI level, so the test decides when the
    client goes away (httpx's ASGITransport reads a response to its end first)."""

    def __init__(self, app: FastAPI, body: dict[str, Any], headers: dict[str, str] | None = None):
        self.app = app
        self.body = json.dumps(body).encode()
        self.headers = [(b"content-type", b"application/json"), (b"host", b"test")] + [
            (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
        ]
        self.messages: list[dict[str, Any]] = []
        self.first_event = asyncio.Event()
        self._gone = asyncio.Event()
        self._sent_body = False
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if b"event: generation" in message.get("body", b""):
            self.first_event.set()

    def start(self) -> RawStream:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/generate",
            "raw_path": b"/generate",
            "query_string": b"",
            "root_path": "",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        self.task = asyncio.create_task(self.app(scope, self._receive, self._send))
        return self

    def disconnect(self) -> None:
        self._gone.set()

    async def wait(self, timeout: float = 20) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages if "body" in m).decode()
