"""API keys: every call names a key, every key belongs to one tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Your Likeness API key.")
_bearer = HTTPBearer(auto_error=False, description="Your Likeness API key as a bearer token.")


def tenant_for_key(presented: str, tenants_by_key: dict[str, str]) -> str | None:
    """Constant-time over every key, so timing does not reveal how much of a key matched."""
    found: str | None = None
    for key, tenant in tenants_by_key.items():
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = tenant
    return found


async def current_tenant(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    presented = api_key or (bearer.credentials if bearer else None)
    if not presented:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = tenant_for_key(presented, request.app.state.tenants_by_key)
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown API key: check the key (likeness up prints the local one)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


Tenant = Annotated[str, Depends(current_tenant)]
