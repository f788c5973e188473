"""Configuration of ``meshtrace serve``: flags over ``MESHTRACE_*`` environment over a YAML file.

Every error names where the value came from (the flag, the variable, or the file and the path in it)
and how to fix it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from meshtrace.errors import ConfigError, InvalidQuery
from meshtrace.ingest.auth import DEFAULT_TENANT, TENANT_RE
from meshtrace.listen import Address, parse_address
from meshtrace.query.params import parse_duration_ns, parse_size
from meshtrace.store import StoreOptions

FIXES = {
    "grpc": "give host:port, e.g. 0.0.0.0:4317 (port 0 picks a free one)",
    "otlp_http": "give host:port, e.g. 0.0.0.0:4318",
    "http": "give host:port, e.g. 0.0.0.0:16686",
    "retention": "give a duration such as 7d, 48h or 30m",
    "max_body": "give a size such as 16MiB or 4000000",
    "max_pending": "give a size such as 256MiB",
    "store_cache": "give a size such as 512MiB",
    "flush_interval": "give a duration such as 200ms",
    "graph_wait": "give a duration such as 10s",
    "query_timeout": "give a duration such as 30s or 2m",
    "store_wait": "give a duration such as 5m, or 0s to give up at once",
    "max_request_spans": "give a number of spans, e.g. 100000",
    "max_trace_spans": "give a number of spans, e.g. 100000",
    "tokens": "map each tenant to a token or a list of tokens, e.g. {acme: s3cret}",
    "store": "use clickhouse://host:8123/database, or leave it unset for the embedded engine",
}


class ServeConfig(BaseModel):
    """Everything ``meshtrace serve`` can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grpc: str = "0.0.0.0:4317"
    otlp_http: str = "0.0.0.0:4318"
    http: str = "0.0.0.0:16686"
    data: str = "./meshtrace-data"
    store: str | None = None
    tokens: dict[str, list[str]] = Field(default_factory=dict)
    tokens_file: str | None = None
    no_auth: bool = False
    admin_tenant: str | None = None
    retention: str = "7d"
    max_body: str = "16MiB"
    wal: bool = True
    wal_fsync: bool = True
    flush_interval: str = "200ms"
    graph_wait: str = "10s"
    flush_spans: int = Field(default=10_000, ge=1, le=1_000_000)
    max_pending: str = "256MiB"
    store_cache: str = "512MiB"
    writers: int = Field(default=2, ge=1, le=16)
    query_timeout: str = "30s"
    store_wait: str = "5m"
    max_request_spans: int = Field(default=100_000, ge=1)
    max_trace_spans: int = Field(default=100_000, ge=1)
    log_level: str = "info"

    @field_validator("grpc", "otlp_http", "http")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("retention", "flush_interval", "graph_wait", "query_timeout", "store_wait")
    @classmethod
    def _duration(cls, value: str, info: ValidationInfo) -> str:
        zero_allowed = info.field_name == "store_wait"  # 0s: give up at once
        try:
            ns = parse_duration_ns(value)
        except InvalidQuery as exc:
            raise ValueError(str(exc)) from None
        if ns < 0 or (ns == 0 and not zero_allowed):
            raise ValueError("must not be negative" if zero_allowed else "must be positive")
        return value

    @field_validator("max_body", "max_pending", "store_cache")
    @classmethod
    def _size(cls, value: str) -> str:
        try:
            if parse_size(value) <= 0:
                raise ValueError("must be positive")
        except InvalidQuery as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> dict[str, list[str]]:
        return normalize_tokens(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    # -- derived values ---------------------------------------------------------------------------

    def address(self, name: str) -> Address:
        return parse_address(getattr(self, name))

    @property
    def retention_s(self) -> int:
        return max(parse_duration_ns(self.retention) // 1_000_000_000, 3600)

    @property
    def store_wait_s(self) -> float:
        return parse_duration_ns(self.store_wait) / 1e9

    @property
    def max_body_bytes(self) -> int:
        return parse_size(self.max_body)

    def store_options(self) -> StoreOptions:
        return StoreOptions(
            data_dir=self.data,
            url=self.store,
            retention_s=self.retention_s,
            wal=self.wal,
            wal_fsync=self.wal_fsync,
            flush_interval=parse_duration_ns(self.flush_interval) / 1e9,
            flush_spans=self.flush_spans,
            max_pending_bytes=parse_size(self.max_pending),
            inserters=self.writers,
            graph_wait_ms=parse_duration_ns(self.graph_wait) // 1_000_000,
            query_timeout_s=max(round(parse_duration_ns(self.query_timeout) / 1e9), 1),
            max_trace_spans=self.max_trace_spans,
            cache_bytes=parse_size(self.store_cache),
        )


def normalize_tokens(value: Any) -> dict[str, list[str]]:
    """``{tenant: token}`` or ``{tenant: [tokens]}`` → ``{tenant: [tokens]}``; tenant names checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of tenant to token(s)")
    out: dict[str, list[str]] = {}
    for tenant, tokens in value.items():
        if not TENANT_RE.match(str(tenant)):
            raise ValueError(
                f"tenant name {str(tenant)!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        items = [tokens] if isinstance(tokens, str) else tokens
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise ValueError(f"tenant {tenant!r} needs a non-empty token or list of tokens")
        out[str(tenant)] = [t.strip() for t in items]
    return out


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", source=path, fix="check the path given to --config") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}",
            source=path,
            path=where,
            fix="correct the YAML syntax at that position",
        ) from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("must be a mapping of setting to value", source=path, fix="e.g. 'retention: 7d'")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def build_config(
    file_values: Mapping[str, Any], file_path: str | None, overrides: Mapping[str, tuple[Any, str]]
) -> ServeConfig:
    """Merge file values with overrides (value, origin such as ``--grpc`` or ``MESHTRACE_GRPC``)."""
    merged: dict[str, Any] = dict(file_values)
    origin: dict[str, str] = dict.fromkeys(file_values, file_path or "")
    for key, (value, where) in overrides.items():
        merged[key] = value
        origin[key] = where
    try:
        return ServeConfig.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        path = ".".join(str(p) for p in error["loc"])
        where = origin.get(key, "")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown setting {key!r}"
            fix = "known settings: " + ", ".join(ServeConfig.model_fields)
        else:
            fix = FIXES.get(key, "see 'meshtrace serve --help'")
        if where.startswith("-") or where.startswith("MESHTRACE_"):
            raise ConfigError(message, source=where, fix=fix) from None
        raise ConfigError(message, source=where, path=path, fix=fix) from None


def resolve_tokens(config: ServeConfig) -> tuple[dict[str, str], str | None]:
    """token → tenant from the config and the tokens file.

    When auth is on and no token is given anywhere, tenant ``default`` gets the token kept in
    ``<data>/tokens.yaml`` (generated on first start); that token is returned to be announced.
    """
    by_token: dict[str, str] = {}
    tenants = dict(config.tokens)
    if config.tokens_file:
        doc = load_yaml(config.tokens_file)
        try:
            for tenant, tokens in normalize_tokens(doc).items():
                tenants.setdefault(tenant, []).extend(tokens)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(str(exc), source=config.tokens_file, fix=FIXES["tokens"]) from None
    generated = None
    if not tenants and not config.no_auth:
        path = os.path.join(config.data, "tokens.yaml")
        if os.path.exists(path):
            try:
                tenants = normalize_tokens(load_yaml(path))
            except ValueError as exc:
                raise ConfigError(str(exc), source=path, fix=f"fix or delete {path}; a new token is made") from None
            generated = tenants.get(DEFAULT_TENANT, [None])[0]
        else:
            generated = secrets.token_urlsafe(24)
            os.makedirs(config.data, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(
                    f"# tenant: token (generated by meshtrace serve; edit or pass --token NAME=TOKEN)\n"
                    f"{DEFAULT_TENANT}: {generated}\n"
                )
            tenants = {DEFAULT_TENANT: [generated]}
    for tenant, tokens in tenants.items():
        for token in tokens:
            if by_token.get(token, tenant) != tenant:
                raise ConfigError(
                    f"token given to both tenant {by_token[token]!r} and {tenant!r}",
                    path="tokens",
                    fix="give every tenant its own token",
                )
            by_token[token] = tenant
    return by_token, generated
