"""Adapters on disk (the adapter root) and in the engine.

Each loaded adapter version gets a lora id never used before in this process and the LoRA
name `<name>@v<N>`, so a reload is a new LoRA to vLLM: its prefix cache cannot serve blocks
that the old version computed. A request holds a lease on the version it started with; a
replaced or unloaded version stays in the engine until its last lease ends, then is removed.
Nothing is pinned, so vLLM keeps at most `max_loras` adapters resident and reloads others
from their folders on demand.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distctl.errors import DistctlError
from distctl.generation import LoraAdapter
from distctl.manifest import AdapterVersion, Manifest, check_name, latest_version, list_adapters
from service import telemetry

log = logging.getLogger("distctl.service")


@dataclass
class Loaded:
    """One adapter version in the engine."""

    adapter: LoraAdapter
    manifest: Manifest
    users: int = 0
    retired: bool = False


@dataclass
class Lease:
    """A request's hold on one adapter version; `release` once, when the request ends."""

    registry: AdapterRegistry
    entry: Loaded
    released: bool = False

    @property
    def adapter(self) -> LoraAdapter:
        return self.entry.adapter

    @property
    def manifest(self) -> Manifest:
        return self.entry.manifest

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.registry._release(self.entry)


@dataclass(frozen=True)
class LoadResult:
    entry: Loaded
    previous_version: int | None
    changed: bool


class AdapterRegistry:
    def __init__(self, engine: Any, root: Path) -> None:
        self.engine = engine
        self.root = root
        self._current: dict[str, Loaded] = {}
        self._lock = asyncio.Lock()

    # -- reading ---------------------------------------------------------------------------

    def loaded(self) -> list[Loaded]:
        return list(self._current.values())

    def get(self, name: str) -> Loaded | None:
        return self._current.get(name)

    def on_disk(self) -> list[AdapterVersion]:
        return list_adapters(self.root)

    def lease(self, entry: Loaded) -> Lease:
        """Hold `entry` for one request. Synchronous, so that no reload can come between
        choosing an adapter and holding it."""
        entry.users += 1
        return Lease(self, entry)

    # -- changing --------------------------------------------------------------------------

    async def load_all(self) -> list[str]:
        """Load the newest version of every adapter under the root; the names that failed."""
        failed = []
        for version in self.on_disk():
            try:
                await self.load(version.name)
            except DistctlError as exc:
                log.warning("adapter %s not loaded: %s", version.name, exc)
                failed.append(version.name)
        return failed

    async def load(self, name: str) -> LoadResult:
        """Load the newest version of `name`; a no-op when that version is already loaded."""
        async with self._lock:
            try:
                result = await self._load(name)
            except DistctlError:
                telemetry.ADAPTER_LOADS.labels("failure").inc()
                raise
            telemetry.ADAPTER_LOADS.labels("success").inc()
            return result

    async def _load(self, name: str) -> LoadResult:
        check_name(name)
        version = latest_version(self.root, name)
        if version is None:
            raise DistctlError(f"no adapter named {name!r} under {self.root}", field="name")
        current = self._current.get(name)
        if current is not None and current.adapter.version == version.version:
            return LoadResult(current, current.adapter.version, changed=False)
        adapter = LoraAdapter.from_version(version)
        try:
            ok = await self.engine.add_lora(adapter.request())
        except Exception as exc:  # vLLM reports a bad adapter folder in many ways
            raise DistctlError(f"adapter {name!r} failed to load: {exc}", field="name") from exc
        if ok is False:
            raise DistctlError(f"the engine refused adapter {name!r}", field="name")
        entry = Loaded(adapter, version.manifest)
        self._current[name] = entry
        telemetry.init_adapter(name, version.manifest.attribute)
        telemetry.ADAPTERS_LOADED.set(len(self._current))
        log.info("adapter %s loaded (lora id %d)", adapter.label, adapter.lora_id)
        if current is not None:
            await self._retire(current)
        return LoadResult(entry, current.adapter.version if current else None, changed=True)

    async def unload(self, name: str) -> Loaded:
        async with self._lock:
            entry = self._current.pop(name, None)
            if entry is None:
                raise KeyError(name)
            telemetry.ADAPTERS_LOADED.set(len(self._current))
            await self._retire(entry)
            return entry

    async def close(self) -> None:
        """Take every adapter out of the engine (which may outlive this registry)."""
        async with self._lock:
            entries, self._current = list(self._current.values()), {}
            telemetry.ADAPTERS_LOADED.set(0)
            for entry in entries:
                await self._retire(entry)

    async def _retire(self, entry: Loaded) -> None:
        entry.retired = True
        if entry.users == 0:
            await self._remove(entry)

    async def _release(self, entry: Loaded) -> None:
        entry.users -= 1
        if entry.retired and entry.users == 0:
            await self._remove(entry)

    async def _remove(self, entry: Loaded) -> None:
        try:
            await self.engine.remove_lora(entry.adapter.lora_id)
        except Exception as exc:  # best effort: a failed removal only costs engine memory
            log.warning("removing %s from the engine failed: %s", entry.adapter.label, exc)
        else:
            log.info("adapter %s removed from the engine", entry.adapter.label)
