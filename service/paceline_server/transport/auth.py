"""Bearer tokens and their scopes, the same on every transport.

A token is configured with a scope (`Settings.api_tokens`): `read` may call what only
reads, `write` may call everything. With no token configured authentication is off and
every caller writes. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from paceline_server.domain.errors import Forbidden, Unauthenticated
from paceline_server.settings import Scope, Settings

__all__ = ["Scope", "bearer_token", "known_token", "require", "scope_of"]


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value (None when absent or of
    another scheme)."""
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    scheme, _, token = text.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def known_token(token: str, tokens: Iterable[str]) -> str | None:
    """The configured token equal to `token`, compared in constant time."""
    found = None
    for known in tokens:
        if hmac.compare_digest(known.encode(), token.encode()):
            found = known
    return found


def scope_of(header: str | bytes | None, settings: Settings, *,
             where: str = "Authorization: Bearer <token>") -> Scope:
    """The scope of a call's authorization value (`write` when auth is off); `where`
    tells the caller how its transport carries the token."""
    if not settings.auth_enabled:
        return "write"
    token = bearer_token(header)
    if token is None:
        raise Unauthenticated(f"missing bearer token ({where})")
    known = known_token(token, settings.api_tokens)
    if known is None:
        raise Unauthenticated("unknown bearer token")
    return settings.api_tokens[known]


def require(needed: Scope, scope: Scope) -> Scope:
    """Refuse a read-only token where writing is needed."""
    if needed == "write" and scope != "write":
        raise Forbidden("this token is read-only", {"scope": scope})
    return scope
