"""Tokens → tenants, for ingest and queries alike.

A request names its token in ``Authentication: <token>`` (what the OpenTelemetry Collector config of the
managed-service guide sends) or ``Authorization: Bearer <token>``; gRPC metadata uses the same names.
Tokens are compared by their SHA-256 digest, so lookups take the same time whatever the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping

from meshtrace.errors import ConfigError, Unauthenticated

DEFAULT_TENANT = "default"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEADER_HINT = "send it as 'Authentication: <token>' or 'Authorization: Bearer <token>'"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_tenant(name: str, *, source: str = "", path: str = "") -> str:
    if not TENANT_RE.match(name):
        raise ConfigError(
            f"tenant name {name!r} is not allowed",
            source=source,
            path=path,
            fix="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


class TokenAuth:
    """Resolves the tenant of a request; with ``enabled=False`` everything is tenant ``default``."""

    def __init__(self, tokens: Mapping[str, str], *, enabled: bool = True) -> None:
        """``tokens`` maps token → tenant."""
        self.enabled = enabled
        self._by_digest = {_digest(token): tenant for token, tenant in tokens.items()}

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self._by_digest.values())) if self.enabled else [DEFAULT_TENANT]

    def tenant_for_token(self, token: str | None) -> str:
        if not self.enabled:
            return DEFAULT_TENANT
        if not token:
            raise Unauthenticated(f"missing token: {HEADER_HINT}")
        tenant = self._by_digest.get(_digest(token))
        if tenant is None:
            raise Unauthenticated("unknown token")
        return tenant

    def tenant_for(self, header: Callable[[str], str | None]) -> str:
        """``header(name)`` returns a request header (case-insensitive) or None."""
        return self.tenant_for_token(token_from(header))

    def tenant_for_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        values = {key.lower(): value for key, value in metadata or () if isinstance(value, str)}
        return self.tenant_for(values.get)


def token_from(header: Callable[[str], str | None]) -> str | None:
    for name in ("authentication", "authorization"):
        value = header(name)
        if value:
            value = value.strip()
            if value[:7].lower() == "bearer ":
                value = value[7:].strip()
            return value or None
    return None
