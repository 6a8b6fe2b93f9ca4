"""Running a routed request: SSE events or one JSON body, metrics, the request log line.

The run is consumed by its own asyncio task (the pump), not by the response's task: when
the client disconnects, sse-starlette cancels the response through an anyio cancel scope,
which would also cancel every await in the run's clean-up, the engine abort included. The
response side instead closes the pump under a shield, which aborts the engine requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from distctl.errors import DistctlError
from distctl.generation import Generation, GenerationRun, GenerationSpec, Generator
from service import telemetry
from service.routing import Route
from service.schemas import (
    AdapterRef,
    GenerateResponse,
    GenerationEvent,
    StreamError,
    Summary,
    TallyModel,
    Timings,
)

log = logging.getLogger("distctl.service")

_DONE = object()
DISCONNECT_POLL_S = 0.5
CLIENT_CLOSED_REQUEST = 499


class _Pump:
    """Iterates a run in a task of its own; each generation comes with its tally snapshot."""

    def __init__(self, run: GenerationRun) -> None:
        self.run = run
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _drain(self) -> None:
        try:
            async for generation in self.run:
                await self._queue.put((generation, self.run.tally.to_dict()))
        except Exception as exc:  # handed to the consumer, which reports it
            await self._queue.put(exc)
        else:
            await self._queue.put(_DONE)

    async def items(self) -> AsyncIterator[tuple[Generation, dict[str, Any]]]:
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        while True:
            item = await self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.run.aclose()


def _adapter_label(spec: GenerationSpec) -> str:
    # the name without the version, so reloads do not multiply the series
    return spec.adapter.name if spec.adapter is not None else telemetry.BASE


@dataclass
class Job:
    """One /generate call from start to end; `finish` releases what it holds, once."""

    request_id: str
    route: Route
    run: GenerationRun
    release_slot: Callable[[], None]
    log_fields: dict[str, Any]
    outcome: str = "disconnected"
    _finished: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        request_id: str,
        route: Route,
        generator: Generator,
        release_slot: Callable[[], None],
        log_fields: dict[str, Any],
    ) -> Job:
        spec = route.spec
        adapter, attribute, mode = _adapter_label(spec), spec.attribute.name, spec.mode.value

        def on_attempt(generation: Generation) -> None:
            telemetry.record_attempt(adapter, attribute, mode, spec.target, generation)

        telemetry.IN_FLIGHT.inc()
        return cls(request_id, route, generator.run(spec, on_attempt), release_slot, log_fields)

    def event(self, generation: Generation, tally: dict[str, Any]) -> GenerationEvent:
        return GenerationEvent(
            index=generation.index,
            text=generation.text,
            assigned=generation.assigned,
            extracted=generation.extracted,
            consistent=generation.consistent,
            attempts=generation.attempts,
            tally=TallyModel.model_validate(tally),
        )

    def summary(self) -> Summary:
        run, spec = self.run, self.route.spec
        rate = run.tally.n / run.duration_s if run.duration_s and run.tally.n else None
        lease = self.route.lease
        return Summary(
            tally=TallyModel.of(run.tally),
            adapter=(
                AdapterRef(
                    name=lease.adapter.name,
                    version=lease.adapter.version,
                    method=lease.manifest.method,
                )
                if lease is not None
                else None
            ),
            mode=spec.mode,
            digit_distribution=run.digit_distribution,
            timings=Timings(
                time_to_first_s=run.time_to_first_s,
                duration_s=run.duration_s,
                generations_per_s=rate,
            ),
            attempts_total=run.attempts_total,
        )

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        spec, run = self.route.spec, self.run
        try:
            if self.outcome == "completed":
                telemetry.record_request(
                    _adapter_label(spec),
                    spec.attribute.name,
                    spec.mode.value,
                    run.tally.mae,
                    run.duration_s,
                    run.time_to_first_s,
                )
            self.log_fields.update(
                adapter=spec.adapter.label if spec.adapter is not None else None,
                mode=spec.mode.value,
                n=spec.n,
                outcome=self.outcome,
                generations=run.tally.n,
                attempts_total=run.attempts_total,
                mae=run.tally.mae if run.tally.n else None,
                generation_duration_s=run.duration_s,
            )
            if self.route.lease is not None:
                await self.route.lease.release()
        finally:
            telemetry.IN_FLIGHT.dec()
            self.release_slot()


def _error_message(exc: Exception) -> str:
    # DistctlError carries a message meant for the client; anything else is internal
    # and stays in the log, under the request id
    return (
        str(exc) if isinstance(exc, DistctlError) else f"generation failed ({type(exc).__name__})"
    )


def stream_response(job: Job) -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        pump = _Pump(job.run)
        try:
            async for generation, tally in pump.items():
                yield ServerSentEvent(
                    data=job.event(generation, tally).model_dump_json(), event="generation"
                )
            job.outcome = "completed"
            yield ServerSentEvent(data=job.summary().model_dump_json(), event="summary")
        except Exception as exc:
            job.outcome = "error"
            log.exception("request %s failed mid-stream", job.request_id)
            yield ServerSentEvent(
                data=StreamError(message=_error_message(exc)).model_dump_json(), event="error"
            )
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await pump.close()
                finally:
                    await job.finish()

    # the background task is the safety net for a client gone before the stream began
    return EventSourceResponse(events(), background=BackgroundTask(job.finish))


async def json_response(job: Job, request: Request) -> GenerateResponse | Response:
    """The whole run as one body. The client's connection is checked while the run goes on,
    so that a client gone away aborts the engine requests here too."""
    pump = _Pump(job.run)

    async def collect() -> list[GenerationEvent]:
        return [job.event(g, tally) async for g, tally in pump.items()]

    collector = asyncio.ensure_future(collect())
    try:
        while not collector.done():
            await asyncio.wait({collector}, timeout=DISCONNECT_POLL_S)
            if not collector.done() and await request.is_disconnected():
                collector.cancel()
                # nobody reads this answer; 499 (client closed request) is for the log
                return Response(status_code=CLIENT_CLOSED_REQUEST)
        generations = collector.result()
        job.outcome = "completed"
        return GenerateResponse(generations=generations, summary=job.summary())
    except Exception:
        job.outcome = "error"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if not collector.done():
                collector.cancel()
            with contextlib.suppress(BaseException):
                await collector
            try:
                await pump.close()
            finally:
                await job.finish()
