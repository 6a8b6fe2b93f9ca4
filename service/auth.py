"""Bearer API keys with a scope each (`generate`, or `admin`, which includes generate).

Keys come from DISTCTL_API_KEYS ("key:scope,key:scope") or DISTCTL_API_KEYS_FILE (one
`key:scope` a line, `#` comments). They are compared in constant time and never logged or
echoed. Without keys the service is open, and then it may bind only a loopback address unless
DISTCTL_ALLOW_UNAUTHENTICATED=true.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from distctl.errors import DistctlError
from service.settings import ServiceSettings


class Scope(StrEnum):
    GENERATE = "generate"
    ADMIN = "admin"


# admin includes generate
_GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.GENERATE: frozenset({Scope.GENERATE}),
    Scope.ADMIN: frozenset({Scope.GENERATE, Scope.ADMIN}),
}


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[tuple[bytes, Scope], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def scope_of(self, token: str) -> Scope | None:
        """The scope of a presented key, or None. Every key is compared, so the time taken
        does not depend on which key (if any) matched."""
        presented = token.encode()
        found: Scope | None = None
        for key, scope in self.keys:
            if hmac.compare_digest(presented, key) and found is None:
                found = scope
        return found


def _parse(entries: Iterable[str], source: str) -> list[tuple[bytes, Scope]]:
    parsed = []
    for number, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key, sep, scope = entry.rpartition(":")
        # the message names the entry's position, never the key
        if not sep or not key.strip():
            raise DistctlError(f"{source} entry {number} is not key:scope", field="api_keys")
        try:
            parsed.append((key.strip().encode(), Scope(scope.strip().lower())))
        except ValueError:
            raise DistctlError(
                f"{source} entry {number} has an unknown scope; allowed: "
                + ", ".join(s.value for s in Scope),
                field="api_keys",
            ) from None
    return parsed


def load_keys(settings: ServiceSettings) -> KeyRing:
    keys: list[tuple[bytes, Scope]] = []
    if settings.api_keys is not None:
        keys += _parse(settings.api_keys.get_secret_value().split(","), "DISTCTL_API_KEYS")
    if settings.api_keys_file is not None:
        try:
            lines = settings.api_keys_file.expanduser().read_text("utf-8").splitlines()
        except OSError as exc:
            raise DistctlError(
                f"cannot read DISTCTL_API_KEYS_FILE {settings.api_keys_file}: {exc.strerror}",
                field="api_keys_file",
            ) from None
        keys += _parse(lines, "DISTCTL_API_KEYS_FILE")
    return KeyRing(tuple(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServiceSettings, keys: KeyRing) -> str:
    """What start-up says about access; DistctlError when binding would be unsafe."""
    if keys.enabled:
        return f"API keys configured ({len(keys.keys)}): bearer token required"
    if is_loopback(settings.host):
        return (
            "no API keys configured (DISTCTL_API_KEYS / DISTCTL_API_KEYS_FILE): serving "
            f"unauthenticated on loopback {settings.host} only"
        )
    if settings.allow_unauthenticated:
        return (
            f"no API keys configured: serving UNAUTHENTICATED on {settings.host} because "
            "DISTCTL_ALLOW_UNAUTHENTICATED=true"
        )
    raise DistctlError(
        f"refusing to bind {settings.host} without API keys; set DISTCTL_API_KEYS or "
        "DISTCTL_API_KEYS_FILE, bind 127.0.0.1, or set DISTCTL_ALLOW_UNAUTHENTICATED=true",
        field="host",
    )


_bearer = HTTPBearer(auto_error=False, description="API key, as `Authorization: Bearer KEY`")


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A route dependency: the request's key must grant `scope`."""

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        keys: KeyRing = request.app.state.service.keys
        if not keys.enabled:
            return
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send Authorization: Bearer KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )
        granted = keys.scope_of(credentials.credentials)
        if granted is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scope not in _GRANTS[granted]:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks scope {scope}")

    return check
