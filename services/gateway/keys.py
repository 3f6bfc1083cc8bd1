"""API keys: their format, scopes, and the short-lived cache the gateway checks them through.

A key looks like `lk_<key_id>_<secret>`: `key_id` is public (it names the key in `likeness keys list` and
`revoke`), the secret is 32 random bytes. Only the sha256 of the whole key is stored (see
migrations/0001_api_keys.sql for why that is enough for random keys).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, get_args

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ALL_SCOPES: frozenset[Scope] = frozenset(SCOPES)

_KEY_ID_BYTES = 6  # 12 hex characters: unique enough to name a key, and checked by the primary key
_SECRET_BYTES = 32
_KEY = re.compile(r"^lk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a path segment of every object key


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    tenant_id: str
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: `secret_key` is shown once and kept nowhere."""

    key: ApiKey
    secret_key: str


@dataclass(frozen=True)
class Caller:
    """Who made a request: the tenant every query, object key and event is scoped to, and what it may do."""

    tenant_id: str
    key_id: str
    scopes: frozenset[Scope]


def new_key() -> tuple[str, str]:
    """A fresh (key_id, full key)."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"lk_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def key_sha256(presented: str) -> bytes:
    return hashlib.sha256(presented.encode()).digest()


def looks_like_key(presented: str) -> bool:
    """Whether a string has the shape of a created key (so garbage never reaches the database)."""
    return _KEY.match(presented) is not None


def key_id_of(text: str) -> str:
    """The key id in a full key, or `text` itself (so `revoke` takes either)."""
    found = _KEY.match(text)
    return found.group(1) if found else text


class KeyLookup(Protocol):
    async def find(self, digest: bytes) -> ApiKey | None:
        """The key with this sha256 (revoked or not), or None."""
        ...


class CachedKeys:
    """Looks keys up by hash, and trusts an answer for `ttl_s` seconds (so a revocation lands within that).

    Unknown keys are cached too, so a client retrying a wrong key costs one query per period. The cache is
    emptied when it grows past `max_entries` (many distinct wrong keys), which bounds its memory.
    """

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def find(self, presented: str) -> ApiKey | None:
        if not looks_like_key(presented):
            return None
        digest = key_sha256(presented)
        now = self._clock()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._lookup.find(digest)
        if self._ttl_s > 0:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[digest] = (now + self._ttl_s, found)
        return found
