"""The provider adapter's logic: build identities, release waiting shots, turn provider output into events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

from contracts import (
    ArtifactRef,
    Event,
    GenerateShot,
    IdentityFailed,
    IdentityReady,
    ImageRef,
    ProviderWebhookReceived,
    ReferencesStored,
    RetakeShot,
    ShotFailed,
    ShotGenerated,
    ShotRequested,
)
from contracts.envelope import EVENT_ID_NAMESPACE
from contracts.values import FailureStage
from services.provider_adapter.ports import (
    GeneratedImage,
    Identities,
    IdentityRecord,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    Provider,
    ProviderJobFailed,
    ReferenceImage,
    ShotJob,
    ShotJobs,
    ShotRequest,
    TransientProviderError,
)

log = logging.getLogger(__name__)

Heartbeat = Callable[[float, str], Awaitable[None]]


async def wait_for_identity(
    provider: Provider, job_id: str, *, poll_s: float, timeout_s: float, heartbeat: Heartbeat
) -> IdentityStatus:
    """Poll the provider until the identity is ready or failed; report progress on the way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            status = await provider.identity_status(job_id)
        except TransientProviderError as error:
            await heartbeat(0.0, f"provider busy: {error}")
            await asyncio.sleep(error.retry_after_s or poll_s)
            continue
        if status.state != "pending":
            return status
        await heartbeat(status.percent, "building identity")
        if loop.time() > deadline:
            return IdentityStatus(state="failed", reason=f"identity not ready after {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)


def generate_command(shot: ShotRequested, identity: IdentityRecord, cause: Event) -> GenerateShot:
    assert identity.provider is not None
    assert identity.identity_ref is not None
    return GenerateShot.follow(
        cause,
        key=str(shot.shot_id),
        shot_id=shot.shot_id,
        character_id=shot.character_id,
        provider=identity.provider,
        identity_ref=identity.identity_ref,
        params=shot.params,
        references=identity.references,
    )


def shot_failed(
    shot: ShotRequested | GenerateShot | RetakeShot, cause: Event, stage: FailureStage, reason: str
) -> ShotFailed:
    take = 1 if isinstance(shot, ShotRequested) else shot.take
    return ShotFailed.follow(
        cause,
        key=str(shot.shot_id) if take == 1 else f"{shot.shot_id}:{take}",
        shot_id=shot.shot_id,
        character_id=shot.character_id,
        stage=stage,
        reason=reason,
        take=take,
    )


# Providers whose identity is the reference photos themselves (no training, ready at once, no cost): the only
# ones a fallback may name, since a fallback identity is built on the spot from the character's references.
INSTANT_REFERENCE_PROVIDERS = frozenset(
    {
        "sim",
        "fal-instant-character",
        "fal-flux-redux",
        "leonardo-character-reference",
        "comfyui-ipadapter",
        "comfyui-instantid",
        "comfyui-reference-only",
    }
)


def generate_take(retake: RetakeShot, identity_ref: str) -> GenerateShot:
    """The GenerateShot for one of the consistency gate's retakes (its id derived from the retake)."""
    return GenerateShot.follow(
        retake,
        key=f"{retake.shot_id}:{retake.take}",
        shot_id=retake.shot_id,
        character_id=retake.character_id,
        provider=retake.provider,
        identity_ref=identity_ref,
        params=retake.params,
        references=retake.references,
        take=retake.take,
    )


def retake_with_own_identity(retake: RetakeShot, identity: IdentityRecord) -> Event:
    """A regeneration uses the character's own identity; a take it cannot make fails (the shot with it)."""
    if identity.status != "ready" or identity.identity_ref is None or identity.provider != retake.provider:
        reason = f"no ready {retake.provider} identity for take {retake.take} (identity: {identity.status})"
        return shot_failed(retake, retake, "generation", reason)
    return generate_take(retake, identity.identity_ref)


def fallback_refusal(name: str, provider: Provider | None) -> str | None:
    """Why `name` cannot serve as a fallback here, or None when it can."""
    if provider is None or not provider.available():
        return f"fallback provider {name!r} is not configured here"
    if name not in INSTANT_REFERENCE_PROVIDERS:
        return f"fallback provider {name!r} needs training; only instant-reference providers can be fallbacks"
    return None


async def on_shot_requested(event: ShotRequested, *, identities: Identities) -> list[Event]:
    """Generate now if the identity is ready; otherwise the shot waits for it."""
    identity = await identities.lock(event.character_id, event.tenant_id)
    if identity.status == "ready":
        return [generate_command(event, identity, event)]
    if identity.status == "failed":
        return [shot_failed(event, event, "identity", f"the character's identity failed: {identity.failure}")]
    await identities.add_waiting(event)
    return []


async def identity_settled(
    event: ReferencesStored,
    status: IdentityStatus,
    *,
    identities: Identities,
    simulated: bool,
    weights: ArtifactRef | None = None,
) -> list[Event]:
    """Record the identity's outcome and release (or fail) every shot that waited for it.

    An identity a webhook already settled is left alone: polling that finishes later says nothing more.
    """
    record = await identities.lock(event.character_id, event.tenant_id)
    if record.status in ("ready", "failed"):
        return []
    return await _settle(
        status,
        identities=identities,
        record=record,
        provider=event.provider,
        simulated=simulated,
        weights=weights,
        ready=lambda **fields: IdentityReady.follow(event, **fields),
        failed=lambda **fields: IdentityFailed.follow(event, **fields),
    )


async def identity_settled_by_webhook(
    webhook: ProviderWebhookReceived,
    status: IdentityStatus,
    *,
    character_id: uuid.UUID,
    tenant_id: str,
    identities: Identities,
    simulated: bool,
    weights: ArtifactRef | None = None,
) -> list[Event]:
    """As `identity_settled`, when a provider's webhook led us to check the job before the next poll.

    Only a still-pending identity is settled (whichever of webhook and polling comes first wins);
    event ids derive from the webhook, so a redelivered webhook emits the very same events.
    """
    record = await identities.lock(character_id, tenant_id)
    if record.status != "pending" or status.state == "pending" or record.provider is None:
        return []
    envelope = {"correlation_id": character_id, "causation_id": webhook.event_id, "tenant_id": tenant_id}

    def ready(**fields: object) -> IdentityReady:
        key = f"{webhook.event_id}:IdentityReady:{character_id}"
        return IdentityReady.model_validate({"event_id": uuid.uuid5(EVENT_ID_NAMESPACE, key), **envelope, **fields})

    def failed(**fields: object) -> IdentityFailed:
        key = f"{webhook.event_id}:IdentityFailed:{character_id}"
        return IdentityFailed.model_validate({"event_id": uuid.uuid5(EVENT_ID_NAMESPACE, key), **envelope, **fields})

    return await _settle(
        status,
        identities=identities,
        record=record,
        provider=record.provider,
        simulated=simulated,
        weights=weights,
        ready=ready,
        failed=failed,
    )


async def _settle(
    status: IdentityStatus,
    *,
    identities: Identities,
    record: IdentityRecord,
    provider: str,
    simulated: bool,
    weights: ArtifactRef | None,
    ready: Callable[..., IdentityReady],
    failed: Callable[..., IdentityFailed],
) -> list[Event]:
    character_id = record.character_id
    waiting = await identities.take_waiting(character_id)
    if status.state == "ready" and status.identity_ref:
        await identities.mark_ready(character_id, status.identity_ref)
        identity = await identities.lock(character_id, record.tenant_id)
        done = ready(
            character_id=character_id,
            provider=provider,
            identity_ref=status.identity_ref,
            training_seconds=status.training_seconds,
            cost_usd=status.cost_usd,
            simulated=simulated,
            weights=weights,
        )
        return [done, *(generate_command(shot, identity, done) for shot in waiting)]
    reason = status.reason or "the provider gave no reason"
    await identities.mark_failed(character_id, reason)
    gone = failed(character_id=character_id, provider=provider, reason=reason)
    return [gone, *(shot_failed(shot, gone, "identity", reason) for shot in waiting)]


async def generate(
    command: GenerateShot,
    *,
    provider: Provider,
    references: list[ReferenceImage],
    attempt: int,
    max_attempts: int,
    jobs: ShotJobs,
    on_progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> GeneratedImage | ShotFailed:
    """Resume the shot's provider job, or submit one; wait for it. See jobs.py for the rules.

    `attempt` is the command's delivery count: transient errors propagate for a later delivery until
    it reaches `max_attempts`, then the shot fails. Submissions are numbered apart (ShotJob.attempt).
    """
    job = await jobs.latest(command.shot_id, command.take)
    if job is not None and job.outcome in ("refused", "abandoned"):  # settled for good, the event not yet sent
        return shot_failed(command, command, "generation", job.failure or "the provider job failed")
    resuming = job is not None and job.outcome in (None, "succeeded")
    number = job.attempt if job is not None and resuming else (job.attempt + 1 if job is not None else 1)
    request = ShotRequest(
        shot_id=command.shot_id,
        character_id=command.character_id,
        identity_ref=command.identity_ref,
        params=command.params,
        references=references,
        attempt=number,
    )
    job_id: str | None = None
    try:
        if job is not None and resuming:
            job_id = job.job_id
            log.info(
                "shot %s: resuming %s job %s (submission %d, %s) instead of submitting again",
                command.shot_id,
                job.provider,
                job_id,
                number,
                "its image made" if job.outcome == "succeeded" else "still running",
            )
        else:
            if attempt > max_attempts:  # a crash after the last allowed failure: submit nothing more
                return shot_failed(command, command, "generation", f"gave up after {attempt - 1} attempts")
            job_id = await provider.start_shot(request)
            submitted = ShotJob(command.shot_id, number, provider.name, job_id, now(), take=command.take)
            await _record(jobs, submitted, command.tenant_id)
        image = await provider.finish_shot(job_id, request, on_progress)
    except ProviderJobFailed as error:
        if job_id is not None:
            await jobs.settle(command.shot_id, number, job_id, "failed", str(error))
        if attempt >= max_attempts:
            return shot_failed(command, command, "generation", f"gave up after {attempt} attempts: {error}")
        raise
    except TransientProviderError as error:
        if attempt >= max_attempts:
            reason = f"gave up after {attempt} attempts: {error}"
            if job_id is not None:
                await jobs.settle(command.shot_id, number, job_id, "abandoned", reason)
            return shot_failed(command, command, "generation", reason)
        raise
    except PermanentProviderError as error:
        reason = f"the provider refused the shot: {error}"
        if job_id is not None:
            await jobs.settle(command.shot_id, number, job_id, "refused", reason)
        return shot_failed(command, command, "generation", reason)
    await jobs.settle(command.shot_id, number, job_id, "succeeded")
    if job is not None and resuming:  # the provider's latency runs from the submission, not from the resume
        since_submitted_ms = (now() - job.submitted_at).total_seconds() * 1000.0
        image = replace(image, latency_ms=max(image.latency_ms, since_submitted_ms))
    return image


async def _record(jobs: ShotJobs, job: ShotJob, tenant_id: str) -> None:
    """Save the job before waiting on it. If that fails, the job is waited on all the same (it is paid for)."""
    try:
        recorded = await jobs.record(job, tenant_id)
    except Exception:
        log.exception(
            "shot %s: could not save %s job %s; waiting on it unsaved (a crash now would submit again)",
            job.shot_id,
            job.provider,
            job.job_id,
        )
        return
    if not recorded:
        log.error(
            "shot %s was submitted twice: %s job %s for submission %d, which holds another job already",
            job.shot_id,
            job.provider,
            job.job_id,
            job.attempt,
        )


def shot_generated(
    command: GenerateShot, image: GeneratedImage, stored: ImageRef, attempt: int, rerouted_from: str | None = None
) -> ShotGenerated:
    return ShotGenerated.follow(
        command,
        shot_id=command.shot_id,
        character_id=command.character_id,
        provider=command.provider,
        image=stored,
        latency_ms=image.latency_ms,
        cost_usd=image.cost_usd,
        attempts=attempt,
        simulation=image.simulation,
        take=command.take,
        rerouted_from=rerouted_from,
    )


def identity_request(event: ReferencesStored, references: list[ReferenceImage]) -> IdentityRequest:
    return IdentityRequest(
        character_id=event.character_id,
        tenant_id=event.tenant_id,
        strategy=event.strategy,
        references=references,
    )
