"""Prometheus metrics of the service, exported beside vLLM's own `vllm:*` series.

vLLM's AsyncLLM (built with stats on) registers its metrics in prometheus_client's default
REGISTRY in this process, so ours live there too and /metrics exports that registry. When
PROMETHEUS_MULTIPROC_DIR is set, values live in per-process files and are read back through
a MultiProcessCollector, as vLLM's own server does.

Labels are bounded: adapter (the adapter's name, not its version, or "base"), attribute,
class, mode, outcome, status. Label values known in advance start at 0, so a dashboard shows
0 rather than "no data".
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from distctl.attributes import ATTRIBUTES
from distctl.generation import Generation, Mode

BASE = "base"  # the adapter label of generations on the base model
INVALID = "invalid"  # the class label of a text that expresses no class
OUTCOMES = ("match", "mismatch", "invalid")
LOAD_OUTCOMES = ("success", "failure")
# every status the service itself answers with
STATUSES = ("200", "401", "403", "404", "422", "429", "499", "500", "503")

GENERATIONS = Counter(
    "distctl_generations",
    "Generations (every attempt) by the class read from the text, or invalid",
    ["adapter", "attribute", "class", "mode"],
)
TARGET_MASS = Counter(
    "distctl_target_mass",
    "Target probability of each class, added once per generation: the expected share of a "
    "class is rate(target_mass{class}) / sum(rate(target_mass))",
    ["adapter", "attribute", "class", "mode"],
)
STEERING = Counter(
    "distctl_steering",
    "Steered generations (every attempt) by whether the text expresses the assigned class",
    ["adapter", "attribute", "mode", "outcome"],
)
REQUEST_MAE = Histogram(
    "distctl_request_mae",
    "MAE of each finished request's tally against its target",
    ["adapter", "attribute", "mode"],
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
)
REQUEST_DURATION = Histogram(
    "distctl_request_duration_seconds",
    "Duration of each finished /generate request",
    ["mode"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
TIME_TO_FIRST = Histogram(
    "distctl_time_to_first_generation_seconds",
    "Time from the start of a /generate request to its first finished generation",
    ["mode"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80),
)
IN_FLIGHT = Gauge(
    "distctl_requests_in_flight", "/generate requests being served", multiprocess_mode="livesum"
)
REQUESTS = Counter("distctl_requests", "HTTP requests answered, by status code", ["status"])
ENGINE_READY = Gauge(
    "distctl_engine_ready", "1 when the engine serves, else 0", multiprocess_mode="livemax"
)
ADAPTERS_LOADED = Gauge(
    "distctl_adapters_loaded",
    "Adapters the service serves (newest loaded version of each name)",
    multiprocess_mode="livemax",
)
ADAPTER_LOADS = Counter("distctl_adapter_loads", "Adapter loads and reloads", ["outcome"])


def init_series(adapters: Iterable[tuple[str, str]] = ()) -> None:
    """Start the known label combinations at 0: the base model for every attribute, plus
    each (adapter name, attribute) given."""
    for status in STATUSES:
        REQUESTS.labels(status)
    for outcome in LOAD_OUTCOMES:
        ADAPTER_LOADS.labels(outcome)
    for mode in Mode:
        REQUEST_DURATION.labels(mode.value)
        TIME_TO_FIRST.labels(mode.value)
    pairs = [(BASE, name) for name in ATTRIBUTES] + list(adapters)
    for adapter, attribute in pairs:
        init_adapter(adapter, attribute)


def init_adapter(adapter: str, attribute: str) -> None:
    for mode in Mode:
        REQUEST_MAE.labels(adapter, attribute, mode.value)
        for cls in (*ATTRIBUTES[attribute].classes, INVALID):
            GENERATIONS.labels(adapter, attribute, cls, mode.value)
        for cls in ATTRIBUTES[attribute].classes:
            TARGET_MASS.labels(adapter, attribute, cls, mode.value)
        for outcome in OUTCOMES:
            STEERING.labels(adapter, attribute, mode.value, outcome)


def record_attempt(
    adapter: str, attribute: str, mode: str, target: Mapping[str, float], generation: Generation
) -> None:
    """One attempt of one sample (retries included: these counters measure the model)."""
    GENERATIONS.labels(adapter, attribute, generation.extracted or INVALID, mode).inc()
    for cls, p in target.items():
        TARGET_MASS.labels(adapter, attribute, cls, mode).inc(p)
    if generation.assigned is not None:
        if generation.extracted is None:
            outcome = "invalid"
        elif generation.extracted == generation.assigned:
            outcome = "match"
        else:
            outcome = "mismatch"
        STEERING.labels(adapter, attribute, mode, outcome).inc()


def record_request(
    adapter: str,
    attribute: str,
    mode: str,
    mae: float,
    duration_s: float | None,
    time_to_first_s: float | None,
) -> None:
    """A /generate request that ran to its end."""
    REQUEST_MAE.labels(adapter, attribute, mode).observe(mae)
    if duration_s is not None:
        REQUEST_DURATION.labels(mode).observe(duration_s)
    if time_to_first_s is not None:
        TIME_TO_FIRST.labels(mode).observe(time_to_first_s)


def exposition() -> tuple[bytes, str]:
    """The /metrics body and its content type."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
