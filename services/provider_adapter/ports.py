"""The interface every provider adapter implements, whatever the provider's approach."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol
from uuid import UUID

from contracts import ImageRef, ShotParams, ShotRequested, SimulationNote, Strategy


class ProviderError(Exception):
    """A provider call failed. `retryable` says whether trying again later can help."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TransientProviderError(ProviderError):
    """Rate limits, 5xx, time-outs: retry with backoff."""

    retryable = True


class PermanentProviderError(ProviderError):
    """Validation errors and refusals: retrying cannot help; the shot or identity fails."""

    retryable = False


@dataclass(frozen=True)
class ReferenceImage:
    ref: ImageRef
    data: bytes


@dataclass(frozen=True)
class IdentityRequest:
    character_id: UUID
    tenant_id: str
    strategy: Strategy
    references: list[ReferenceImage]


@dataclass(frozen=True)
class WeightsFile:
    """Trained weights a provider hands out, to be copied into our storage before its link expires.

    `trusted_origin`: the provider's own API origin, fetched even where it is not a public address (a
    self-hosted provider, a loopback fake); any other host must resolve to public addresses only.
    """

    url: str
    file_name: str
    content_type: str = "application/octet-stream"
    trusted_origin: str | None = None

    def __repr__(self) -> str:  # provider file URLs can carry signed tokens: never log them whole
        return f"WeightsFile(file_name={self.file_name!r})"


@dataclass(frozen=True)
class IdentityStatus:
    state: Literal["pending", "ready", "failed"]
    percent: float = 0.0
    identity_ref: str | None = None
    reason: str | None = None
    training_seconds: float = 0.0
    cost_usd: float = 0.0
    weights: WeightsFile | None = None


@dataclass(frozen=True)
class ShotRequest:
    shot_id: UUID
    character_id: UUID
    identity_ref: str
    params: ShotParams
    references: list[ReferenceImage]
    attempt: int = 1


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    content_type: Literal["image/png", "image/jpeg", "image/webp"]
    latency_ms: float
    cost_usd: float
    simulation: SimulationNote | None = field(default=None)


ProgressCallback = Callable[[float, str], Awaitable[None]]


class Provider(Protocol):
    """What studios already expect of an image provider: is it there, build an identity, make shots."""

    name: str
    simulated: bool

    def available(self) -> bool:
        """True when the provider is configured (keys, base URL) and can take work."""
        ...

    async def create_identity(self, request: IdentityRequest) -> str:
        """Start building an identity; return the provider's job id (persisted before waiting)."""
        ...

    async def identity_status(self, job_id: str) -> IdentityStatus:
        """Where the identity job stands. Safe to call repeatedly and after a restart."""
        ...

    async def generate(self, request: ShotRequest, on_progress: ProgressCallback | None = None) -> GeneratedImage:
        """Make one shot. Raises TransientProviderError or PermanentProviderError."""
        ...


@dataclass(frozen=True)
class IdentityRecord:
    character_id: UUID
    tenant_id: str
    provider: str | None
    status: Literal["awaiting_references", "pending", "ready", "failed"]
    job_id: str | None
    identity_ref: str | None
    references: list[ImageRef]
    failure: str | None


class Identities(Protocol):
    """The provider adapter's memory of identity jobs and waiting shots (one transaction)."""

    async def lock(self, character_id: UUID, tenant_id: str) -> IdentityRecord:
        """Lock the character's identity row, creating an `awaiting_references` placeholder if absent."""
        ...

    async def begin(self, character_id: UUID, provider: str, strategy: str, references: list[ImageRef]) -> None: ...

    async def set_job_id(self, character_id: UUID, job_id: str) -> None: ...

    async def mark_ready(self, character_id: UUID, identity_ref: str) -> None: ...

    async def mark_failed(self, character_id: UUID, reason: str) -> None: ...

    async def add_waiting(self, shot: ShotRequested) -> None: ...

    async def take_waiting(self, character_id: UUID) -> list[ShotRequested]: ...
