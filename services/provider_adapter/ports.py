"""The interface every provider adapter implements, whatever the provider's approach."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
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


class ProviderJobFailed(TransientProviderError):
    """The provider's shot job ended without a usable image (its own error, a time-out we cancelled it
    for, a job it no longer knows). Waiting on that job again cannot help; a new attempt submits a new
    job. A plain TransientProviderError from `finish_shot` means the job's fate is unknown (a poll
    failed): the next delivery resumes the same job instead.
    """


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

    async def start_shot(self, request: ShotRequest) -> str:
        """Submit one shot and return the provider's job id, which the service saves before waiting.

        Raises PermanentProviderError (retrying cannot help) or TransientProviderError (nothing was
        submitted, as far as we know: try again later).
        """
        ...

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        """Wait for the job `start_shot` returned and fetch its image. Never submits anything.

        Safe to call again with the same job id, after a crash or by a later delivery: it resumes.
        Raises ProviderJobFailed (the job ended without an image: a new attempt may submit again),
        TransientProviderError (the job's fate is unknown: resume it later) or PermanentProviderError.
        """
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


ShotJobOutcome = Literal["succeeded", "failed", "refused", "abandoned"]


@dataclass(frozen=True)
class ShotJob:
    """One provider job submitted for a shot (table `provider.shot_jobs`).

    `attempt` numbers the submissions of one take of the shot (1, 2, ...; `take` 1 is the shot's first take,
    2 and on the consistency gate's retakes, each with jobs of its own). `outcome` None: submitted, not settled yet
    (resume it); succeeded: it made the image (resume fetches it again); failed: it ended without an
    image (a new attempt may submit again); refused / abandoned: the shot failed for good with `failure`.
    """

    shot_id: UUID
    attempt: int
    provider: str
    job_id: str
    submitted_at: datetime
    outcome: ShotJobOutcome | None = None
    failure: str | None = None
    take: int = 1


class ShotJobs(Protocol):
    """The provider jobs submitted for shots. Each write is durable on its own: a job id must be saved
    before anything waits on it, whatever happens to the message's transaction."""

    async def latest(self, shot_id: UUID, take: int = 1) -> ShotJob | None:
        """The take's most recent job (highest attempt), or None before its first submission."""
        ...

    async def record(self, job: ShotJob, tenant_id: str) -> bool:
        """Save a job just submitted; False where that shot, take and attempt hold a job already (submitted twice)."""
        ...

    async def settle(
        self, shot_id: UUID, attempt: int, job_id: str, outcome: ShotJobOutcome, failure: str | None = None
    ) -> None: ...


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
