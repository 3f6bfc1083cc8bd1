"""API keys: every call names a key, every key belongs to one tenant and holds scopes.

Two kinds of key are accepted: bootstrap keys from LIKENESS_GATEWAY_API_KEYS (every scope; what `likeness
up`, the demo and the tests use) and keys created with `likeness keys create` (stored hashed, scoped,
revocable; a lookup is trusted for `key_cache_s`). Each key then spends a token of its rate limit.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.keys import ALL_SCOPES, CachedKeys, Caller, Scope
from services.gateway.rate_limit import TokenBuckets

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Your Likeness API key.")
_bearer = HTTPBearer(auto_error=False, description="Your Likeness API key as a bearer token.")


@dataclass(frozen=True)
class KeyCheck:
    """What the gateway checks a key against, built in its lifespan (`app.state.key_check`)."""

    tenants_by_key: dict[str, str]  # bootstrap keys
    stored: CachedKeys
    rate_limit: TokenBuckets


def tenant_for_key(presented: str, tenants_by_key: dict[str, str]) -> str | None:
    """Constant-time over every key, so timing does not reveal how much of a key matched."""
    found: str | None = None
    for key, tenant in tenants_by_key.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = tenant
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def _caller_for_key(presented: str, check: KeyCheck) -> Caller:
    tenant = tenant_for_key(presented, check.tenants_by_key)
    if tenant is not None:
        # Rate-limited by a name derived from the key, never the key itself.
        return Caller(tenant, f"bootstrap-{hashlib.sha256(presented.encode()).hexdigest()[:12]}", ALL_SCOPES)
    key = await check.stored.find(presented)
    if key is None:
        raise _unauthorized(
            "unknown API key: check the key (`likeness up` prints the local one; `likeness keys create` makes one)"
        )
    if key.revoked_at is not None:
        raise _unauthorized(
            f"this key ({key.key_id}) was revoked on {key.revoked_at.isoformat(timespec='seconds')}; "
            "ask for a new one (`likeness keys create`)"
        )
    return Caller(key.tenant_id, key.key_id, key.scopes)


async def current_caller(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind the request's key, once its rate limit allows the request."""
    presented = api_key or (bearer.credentials if bearer else None)
    if not presented:
        raise _unauthorized("missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
    check: KeyCheck = request.app.state.key_check
    caller = await _caller_for_key(presented, check)
    throttled = check.rate_limit.take(caller.key_id)
    if throttled is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            throttled.message(),
            headers={"Retry-After": throttled.retry_after_header},
        )
    return caller


def _tenant_with(scope: Scope, caller: Caller) -> str:
    if scope not in caller.scopes:
        held = ", ".join(sorted(caller.scopes)) or "none"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this API key lacks the '{scope}' scope (it has: {held}); "
            f"create one with `likeness keys create --scope {scope}`",
        )
    return caller.tenant_id


async def read_tenant(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return _tenant_with("read", caller)


async def write_tenant(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return _tenant_with("write", caller)


async def admin_tenant(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return _tenant_with("admin", caller)


Tenant = Annotated[str, Depends(read_tenant)]  # reads (GET): the 'read' scope
WriteTenant = Annotated[str, Depends(write_tenant)]  # submissions (POST): the 'write' scope
AdminTenant = Annotated[str, Depends(admin_tenant)]  # reserved for managing keys over HTTP
