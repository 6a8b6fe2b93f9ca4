"""The FastAPI app: routes, the engine's lifespan, request ids, the request log line."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distctl.attributes import ATTRIBUTES, TASKS
from distctl.errors import DistctlError
from distctl.generation import Generator
from distctl.manifest import AdapterVersion
from distctl.occupations import COUNTRIES, occupations
from service import telemetry
from service.auth import KeyRing, load_keys, require
from service.auth import Scope as AuthScope
from service.registry import AdapterRegistry, Loaded
from service.routing import route
from service.schemas import (
    AdapterInfo,
    AdapterLoad,
    AdapterLoaded,
    AttributeInfo,
    GenerateRequest,
    GenerateResponse,
    Health,
    MessageBody,
    OccupationInfo,
    Readiness,
    TargetsResponse,
    ValidationErrorBody,
    error_body,
)
from service.settings import ServiceSettings
from service.streaming import Job, json_response, stream_response

log = logging.getLogger("distctl.service")
access_log = logging.getLogger("distctl.service.access")

EngineFactory = Callable[[ServiceSettings], Any]

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID_HEADER = "X-Request-ID"


class Slots:
    """At most `limit` /generate requests at once; the next one is refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


@dataclass
class ServiceState:
    settings: ServiceSettings
    keys: KeyRing
    slots: Slots
    engine: Any = None
    generator: Generator | None = None
    registry: AdapterRegistry | None = None
    ready: bool = False

    @property
    def serving(self) -> bool:
        return self.ready and not getattr(self.engine, "errored", False)


class RequestContext:
    """Pure ASGI (so streaming passes through untouched): a request id in `X-Request-ID`
    (the client's, if it sent a sane one), the status counted in Prometheus, and one JSON
    log line per request when its response has ended, with what the route added to
    `request.state.log`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = (
            dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        )
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        fields: dict[str, Any] = {}
        state = scope.setdefault("state", {})
        state["request_id"], state["log"] = request_id, fields
        started = time.perf_counter()
        code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            telemetry.REQUESTS.labels(str(code)).inc()
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": code,
                        "duration_s": round(time.perf_counter() - started, 4),
                        **fields,
                    }
                },
            )


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _serving(request: Request) -> ServiceState:
    svc = _state(request)
    if not svc.serving:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine is not ready")
    return svc


def _eval_mae(version: AdapterVersion) -> float | None:
    for entry in reversed(version.manifest.eval):
        if isinstance(entry.get("mae"), int | float):
            return float(entry["mae"])
    return None


def _info(version: AdapterVersion, loaded: Loaded | None) -> AdapterInfo:
    m = version.manifest
    return AdapterInfo(
        name=version.name,
        version=version.version,
        dataset=m.dataset,
        attribute=m.attribute,
        task=m.task,
        target=m.target,
        method=m.method,
        loaded=loaded is not None,
        loaded_version=loaded.adapter.version if loaded is not None else None,
        eval_mae=_eval_mae(version),
    )


def _loaded_version(entry: Loaded) -> AdapterVersion:
    a = entry.adapter
    return AdapterVersion(a.name, a.version, a.path, entry.manifest)


_GENERATE = Depends(require(AuthScope.GENERATE))
_ADMIN = Depends(require(AuthScope.ADMIN))
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": MessageBody, "description": "missing or invalid API key"},
    403: {"model": MessageBody, "description": "the API key lacks the scope"},
}


def create_app(
    settings: ServiceSettings | None = None, engine_factory: EngineFactory | None = None
) -> FastAPI:
    """The app. Its lifespan builds the engine (`distctl.engine.build_engine`) and loads the
    adapters; with `engine_factory` the caller supplies the engine and keeps owning it."""
    settings = settings or ServiceSettings()
    keys = load_keys(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc: ServiceState = app.state.service
        if engine_factory is None:
            from distctl.engine import build_engine

            engine = build_engine(settings)
        else:
            engine = engine_factory(settings)
        svc.engine = engine
        svc.generator = Generator(engine, engine.get_tokenizer())
        svc.registry = AdapterRegistry(engine, settings.adapters_path)
        failed = await svc.registry.load_all()
        telemetry.init_series((e.adapter.name, e.adapter.attribute) for e in svc.registry.loaded())
        svc.ready = True
        telemetry.ENGINE_READY.set(1)
        log.info(
            "engine ready",
            extra={
                "fields": {
                    "adapters": [e.adapter.label for e in svc.registry.loaded()],
                    "adapters_failed": failed,
                }
            },
        )
        try:
            yield
        finally:
            svc.ready = False
            telemetry.ENGINE_READY.set(0)
            await svc.registry.close()
            if engine_factory is None:
                engine.shutdown()

    app = FastAPI(
        title="distctl",
        version="0.1.0",
        summary="LLM generations whose distribution across samples follows a target",
        lifespan=lifespan,
    )
    app.state.service = ServiceState(settings, keys, Slots(settings.max_concurrent))
    telemetry.init_series()
    app.add_middleware(RequestContext)

    @app.exception_handler(DistctlError)
    async def _invalid(request: Request, exc: DistctlError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.field, exc.message), status.HTTP_422_UNPROCESSABLE_CONTENT
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        dependencies=[_GENERATE],
        responses={
            200: {
                "description": "stream=true: text/event-stream of `generation` events, then "
                "one `summary` (or an `error`); stream=false: this JSON body",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            422: {"model": ValidationErrorBody, "description": "a field is invalid"},
            429: {"model": MessageBody, "description": "too many concurrent requests"},
            503: {"model": MessageBody, "description": "the engine is not ready"},
            **_AUTH_ERRORS,
        },
    )
    async def generate(body: GenerateRequest, request: Request) -> Any:
        """Sample `n` generations whose attribute follows `target`."""
        svc = _serving(request)
        if not svc.slots.acquire():
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many concurrent requests (at most {svc.slots.limit}, "
                "DISTCTL_MAX_CONCURRENT); retry later",
                headers={"Retry-After": "1"},
            )
        assert svc.registry is not None and svc.generator is not None
        try:
            routed = route(body, svc.registry, svc.generator, svc.settings)
        except BaseException:
            svc.slots.release()
            raise
        job = Job.start(
            request.state.request_id, routed, svc.generator, svc.slots.release, request.state.log
        )
        if body.stream:
            return stream_response(job)
        return await json_response(job, request)

    @app.get(
        "/adapters",
        response_model=list[AdapterInfo],
        dependencies=[_GENERATE],
        responses={**_AUTH_ERRORS, 503: {"model": MessageBody}},
    )
    async def list_adapters(request: Request) -> list[AdapterInfo]:
        """Adapters under the adapter root (newest version of each) and what is loaded."""
        registry = _serving(request).registry
        assert registry is not None
        on_disk = {v.name: v for v in registry.on_disk()}
        loaded = {e.adapter.name: e for e in registry.loaded()}
        for name, entry in loaded.items():
            on_disk.setdefault(name, _loaded_version(entry))
        return [_info(v, loaded.get(name)) for name, v in sorted(on_disk.items())]

    @app.post(
        "/adapters",
        response_model=AdapterLoaded,
        dependencies=[_ADMIN],
        responses={
            **_AUTH_ERRORS,
            422: {"model": ValidationErrorBody},
            503: {"model": MessageBody},
        },
    )
    async def load_adapter(body: AdapterLoad, request: Request) -> AdapterLoaded:
        """Load an adapter folder by name, or reload it when a newer version is on disk.
        Requests in flight finish on the version they started with."""
        registry = _serving(request).registry
        assert registry is not None
        result = await registry.load(body.name)
        return AdapterLoaded(
            adapter=_info(_loaded_version(result.entry), result.entry),
            previous_version=result.previous_version,
            changed=result.changed,
        )

    @app.delete(
        "/adapters/{name}",
        response_model=AdapterInfo,
        dependencies=[_ADMIN],
        responses={**_AUTH_ERRORS, 404: {"model": MessageBody}, 503: {"model": MessageBody}},
    )
    async def unload_adapter(name: str, request: Request) -> AdapterInfo:
        """Stop serving an adapter (its files stay); requests in flight finish on it."""
        registry = _serving(request).registry
        assert registry is not None
        try:
            entry = await registry.unload(name)
        except KeyError:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"adapter {name!r} is not loaded"
            ) from None
        return _info(_loaded_version(entry), None)

    @app.get(
        "/targets", response_model=TargetsResponse, dependencies=[_GENERATE], responses=_AUTH_ERRORS
    )
    async def targets() -> TargetsResponse:
        """Attributes and classes, named targets and the occupations' real-world shares."""
        return TargetsResponse(
            attributes=[
                AttributeInfo(name=a.name, classes=list(a.classes)) for a in ATTRIBUTES.values()
            ],
            tasks=list(TASKS),
            named_targets={
                "uniform": "1/K for each of the attribute's K classes",
                "real_world": "gender only: the occupation's labour-force shares (needs "
                "occupation and country)",
            },
            countries=list(COUNTRIES),
            occupations=[
                OccupationInfo(
                    country=o.country, title=o.title, sector=o.sector, real_world=o.real_world()
                )
                for country in COUNTRIES
                for o in occupations(country)
            ],
        )

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> Any:
        """The engine serves (503 while it starts or after it failed)."""
        svc = _state(request)
        body = Readiness(
            ready=svc.serving,
            adapters_loaded=len(svc.registry.loaded()) if svc.registry is not None else 0,
        )
        if not body.ready:
            return JSONResponse(body.model_dump(), status.HTTP_503_SERVICE_UNAVAILABLE)
        return body

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text format: distctl_* and vllm:*",
            }
        },
    )
    async def metrics() -> Response:
        """Prometheus metrics."""
        body, content_type = telemetry.exposition()
        return Response(body, media_type=content_type)

    return app
