from __future__ import annotations

import pytest

from meshtrace.errors import ConfigError, Unauthenticated
from meshtrace.ingest.auth import TokenAuth, check_tenant

AUTH = TokenAuth({"tok-a": "acme", "tok-b": "beta"})


@pytest.mark.parametrize(
    "headers",
    [
        {"authentication": "tok-a"},
        {"authorization": "Bearer tok-a"},
        {"authorization": "bearer   tok-a "},
        {"authentication": "Bearer tok-a"},
    ],
)
def test_token_headers(headers):
    assert AUTH.tenant_for(headers.get) == "acme"


def test_authentication_header_wins_over_authorization():
    assert AUTH.tenant_for({"authentication": "tok-b", "authorization": "Bearer tok-a"}.get) == "beta"


def test_missing_and_unknown_tokens():
    with pytest.raises(Unauthenticated, match="missing token"):
        AUTH.tenant_for({}.get)
    with pytest.raises(Unauthenticated, match="unknown token"):
        AUTH.tenant_for({"authentication": "tok-c"}.get)
    with pytest.raises(Unauthenticated):
        AUTH.tenant_for({"authorization": "Bearer "}.get)


def test_grpc_metadata():
    assert AUTH.tenant_for_metadata([("Authentication", "tok-b"), ("x", b"bin")]) == "beta"
    with pytest.raises(Unauthenticated):
        AUTH.tenant_for_metadata(None)


def test_disabled_auth_is_one_tenant():
    assert TokenAuth({}, enabled=False).tenant_for({}.get) == "default"


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65])
def test_tenant_names_are_checked(name):
    with pytest.raises(ConfigError):
        check_tenant(name)
