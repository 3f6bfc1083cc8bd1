"""The provider adapter's work for each message: the I/O around handlers.py's decisions.

Identity jobs are submitted once (the provider's job id is saved before waiting, so a restart
resumes instead of paying twice); shots are generated, copied into our object storage, and
announced through the outbox.

Shot jobs follow the same rule (`handlers.generate`, table `provider.shot_jobs`):

- `Provider.start_shot` submits and returns the provider's job id; it is saved (shot id, submission
  number, provider, job id) before `Provider.finish_shot` waits on it. Every delivery of a
  `GenerateShot` first looks up the shot's latest job and, if one is running (or made its image and
  the event was not sent yet), resumes it with `finish_shot` and logs "resuming ... instead of
  submitting again". A killed or restarted adapter therefore never pays for the same shot twice.
- A new job is submitted, as the next submission number, only when the latest one ended without an
  image (`ProviderJobFailed`: the provider's error, a time-out we cancelled it for, a job the provider
  lost), and only while the delivery count has not passed `max_attempts`: the attempt policy is
  unchanged (a transient error is retried on a later delivery until `max_attempts`, then ShotFailed).
- A plain TransientProviderError while waiting (a poll failed) leaves the job running: the next
  delivery resumes it. Cancelling the wait (shutdown) leaves it running too.
- PermanentProviderError fails the shot (ShotFailed) at once, resubmitting nothing; the job is
  settled `refused` (or `abandoned` when attempts run out while it was still running), so a
  redelivery re-announces the failure instead of submitting.
- The primary key (shot id, submission) refuses a second job for the same submission: where two
  workers raced, the loser logs "submitted twice" (an ERROR) and still waits on the job it paid for.
"""

from __future__ import annotations

import io
import logging

from faststream.nats import NatsMessage
from PIL import Image

from contracts import (
    GenerateShot,
    IdentityFailed,
    IdentityProgress,
    ImageRef,
    ReferencesStored,
    RetakeShot,
    ShotFailed,
    ShotRequested,
)
from infra.bus import RetryLater, backoff_s, delivery_count, publish_event
from infra.metrics import record_breaker_reroute
from infra.runtime import Runtime
from services.provider_adapter import handlers
from services.provider_adapter.adapters.identities import PostgresFallbackIdentities, PostgresIdentities
from services.provider_adapter.adapters.shot_jobs import PostgresShotJobs
from services.provider_adapter.artifacts import WeightsCopier
from services.provider_adapter.breaker import BreakerProvider, Breakers, BreakerSettings
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    Provider,
    ReferenceImage,
    TransientProviderError,
)
from services.provider_adapter.providers.http import http_timeout
from services.provider_adapter.settings import ProviderAdapterSettings

log = logging.getLogger(__name__)


def weights_copier(runtime: Runtime, settings: ProviderAdapterSettings) -> WeightsCopier:
    timeout = http_timeout(connect_s=settings.http_connect_timeout_s, read_s=settings.http_read_timeout_s)
    return WeightsCopier(runtime.store, timeout=timeout, max_bytes=settings.weights_max_bytes)


class ProviderWork:
    def __init__(self, runtime: Runtime, providers: dict[str, Provider], settings: ProviderAdapterSettings) -> None:
        self.runtime = runtime
        self.providers = providers
        self.settings = settings
        self.weights = weights_copier(runtime, settings)
        self.breakers = Breakers(
            BreakerSettings(
                failures=settings.breaker_failures,
                window_s=settings.breaker_window_s,
                window_min_calls=settings.breaker_window_min_calls,
                failure_rate=settings.breaker_failure_rate,
                cool_down_s=settings.breaker_cool_down_s,
            )
        )

    async def load_references(self, refs: list[ImageRef]) -> list[ReferenceImage]:
        return [ReferenceImage(ref=ref, data=await self.runtime.store.get(ref.key)) for ref in refs]

    async def build_identity(self, event: ReferencesStored, msg: NatsMessage) -> None:
        consumer = self.runtime.delivery.consumer("references-stored")
        if await self.runtime.delivery.is_processed(event, consumer):
            return
        provider = self.providers.get(event.provider)
        if provider is None or not provider.available():
            async with self.runtime.delivery.unit_of_work(event, consumer) as work:
                if not work.already_done:
                    reason = f"provider {event.provider!r} is not configured here (known: {sorted(self.providers)})"
                    work.emit(
                        IdentityFailed.follow(
                            event, character_id=event.character_id, provider=event.provider, reason=reason
                        )
                    )
            return
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            identities = PostgresIdentities(conn)
            await identities.lock(event.character_id, event.tenant_id)
            await identities.begin(event.character_id, event.provider, event.strategy, event.references)
            job_id = (await identities.lock(event.character_id, event.tenant_id)).job_id

        async def heartbeat(percent: float, message: str) -> None:
            await msg.in_progress()
            progress = IdentityProgress.follow(
                event,
                key=f"{percent:.0f}",
                character_id=event.character_id,
                provider=event.provider,
                percent=percent,
                message=message,
            )
            await publish_event(self.runtime.broker, progress)

        try:
            if job_id is None:  # first attempt: submit, and remember the job before waiting on it
                request = handlers.identity_request(event, await self.load_references(event.references))
                job_id = await provider.create_identity(request)
                async with self.runtime.pool.acquire() as conn:
                    await PostgresIdentities(conn).set_job_id(event.character_id, job_id)
            status = await handlers.wait_for_identity(
                provider,
                job_id,
                poll_s=self.settings.identity_poll_s,
                timeout_s=self.settings.identity_timeout_s,
                heartbeat=heartbeat,
            )
        except PermanentProviderError as refused:  # retrying cannot help: the identity fails, with the reason
            status = IdentityStatus(state="failed", reason=f"the provider refused the identity: {refused}")
        weights = None
        if status.state == "ready" and status.weights is not None:
            try:
                weights = await self.weights.copy(event.tenant_id, status.weights, heartbeat)
            except TransientProviderError as error:  # the job is done at the provider: poll and copy again later
                raise RetryLater(str(error), delay_s=error.retry_after_s or 5.0) from error
            except PermanentProviderError as refused:  # the identity still works from the provider's copy
                log.warning("identity %s is ready without our copy of its weights: %s", event.character_id, refused)
        async with self.runtime.delivery.unit_of_work(event, consumer) as work:
            if work.already_done:
                return
            work.emit(
                *await handlers.identity_settled(
                    event,
                    status,
                    identities=PostgresIdentities(work.conn),
                    simulated=provider.simulated,
                    weights=weights,
                )
            )

    async def route_shot(self, event: ShotRequested) -> None:
        async with self.runtime.delivery.unit_of_work(event, self.runtime.delivery.consumer("shot-requested")) as work:
            if not work.already_done:
                work.emit(*await handlers.on_shot_requested(event, identities=PostgresIdentities(work.conn)))

    async def route(self, command: GenerateShot, msg: NatsMessage) -> tuple[GenerateShot | ShotFailed, str | None]:
        """Which provider makes this shot now: its own, or (its breaker open) the fallback; with the provider it
        was rerouted from. A job already submitted stays where it is: it is resumed, never moved or resubmitted.
        With the breaker open and no fallback, the shot waits out the cool-down (RetryLater)."""
        job = await PostgresShotJobs(self.runtime.pool).latest(command.shot_id, command.take)
        if job is not None and job.provider != command.provider:  # an earlier delivery rerouted it: stay there
            return await self.rerouted(command, job.provider, msg), command.provider
        if job is not None and job.outcome != "failed":  # in flight, made, or settled for good: never moved
            return command, None
        breaker = self.breakers[command.provider]
        if breaker.allow():
            return command, None
        fallback = self.settings.fallback.get(command.provider)
        if fallback is None or handlers.fallback_refusal(fallback, self.providers.get(fallback)) is not None:
            record_breaker_reroute(command.provider, "waiting")
            wait_s = max(1.0, breaker.retry_after_s())
            raise RetryLater(f"{command.provider}'s circuit breaker is open; the shot waits {wait_s:.0f} s", wait_s)
        log.warning("shot %s: %s's circuit breaker is open; made by %s", command.shot_id, command.provider, fallback)
        record_breaker_reroute(command.provider, fallback)
        return await self.rerouted(command, fallback, msg), command.provider

    async def rerouted(self, command: GenerateShot, name: str, msg: NatsMessage) -> GenerateShot | ShotFailed:
        identity = await self.fallback_identity(command, name, msg)
        if isinstance(identity, ShotFailed):
            return identity
        return command.model_copy(update={"provider": name, "identity_ref": identity})

    async def retake_shot(self, retake: RetakeShot, msg: NatsMessage) -> None:
        """One of the consistency gate's retakes: with the character's own identity (a regeneration), or with an
        identity built on the spot from its references by the fallback provider; then a GenerateShot for it."""
        consumer = self.runtime.delivery.consumer("retake-shot")
        if await self.runtime.delivery.is_processed(retake, consumer):
            return
        if retake.reason == "regenerate":
            async with self.runtime.delivery.unit_of_work(retake, consumer) as work:
                if not work.already_done:
                    identity = await PostgresIdentities(work.conn).lock(retake.character_id, retake.tenant_id)
                    work.emit(handlers.retake_with_own_identity(retake, identity))
            return
        outcome = await self.fallback_identity(retake, retake.provider, msg)
        async with self.runtime.delivery.unit_of_work(retake, consumer) as work:
            if work.already_done:
                return
            if isinstance(outcome, ShotFailed):
                work.emit(outcome)
            else:
                work.emit(handlers.generate_take(retake, outcome))

    async def fallback_identity(
        self, retake: RetakeShot | GenerateShot, name: str, msg: NatsMessage
    ) -> str | ShotFailed:
        """The character's identity with the (instant-reference) provider `name`: saved, or built now.

        The job id is saved before waiting, as for every identity; instant-reference identities cost nothing
        and are ready at once (the simulator's after its `identity_seconds`)."""
        provider = self.providers.get(name)
        refusal = handlers.fallback_refusal(name, provider)
        if refusal is not None or provider is None:
            return handlers.shot_failed(retake, retake, "identity", refusal or f"no provider {name!r}")
        async with self.runtime.pool.acquire() as conn:
            saved = await PostgresFallbackIdentities(conn).find(retake.character_id, name)
        if saved is not None and saved[1] is not None:
            return saved[1]

        async def heartbeat(percent: float, message: str) -> None:
            await msg.in_progress()

        try:
            if saved is None:
                references = await self.load_references(retake.references)
                request = IdentityRequest(retake.character_id, retake.tenant_id, "instant_reference", references)
                job_id = await provider.create_identity(request)
                async with self.runtime.pool.acquire() as conn:
                    job_id = await PostgresFallbackIdentities(conn).save_job(
                        retake.character_id, name, retake.tenant_id, job_id
                    )
            else:
                job_id = saved[0]
            status = await handlers.wait_for_identity(
                provider,
                job_id,
                poll_s=self.settings.identity_poll_s,
                timeout_s=self.settings.fallback_identity_timeout_s,
                heartbeat=heartbeat,
            )
        except PermanentProviderError as refused:
            return handlers.shot_failed(retake, retake, "identity", f"the fallback {name} refused: {refused}")
        except TransientProviderError as error:
            raise RetryLater(str(error), delay_s=error.retry_after_s or 2.0) from error
        if status.state != "ready" or status.identity_ref is None:
            reason = f"the fallback {name} identity failed: {status.reason or 'no reason given'}"
            return handlers.shot_failed(retake, retake, "identity", reason)
        async with self.runtime.pool.acquire() as conn:
            await PostgresFallbackIdentities(conn).mark_ready(retake.character_id, name, status.identity_ref)
        return status.identity_ref

    async def store_image(self, tenant_id: str, image: GeneratedImage) -> ImageRef:
        """Copy the provider's image into our object storage (idempotent: content-addressed)."""
        stored = await self.runtime.store.put_image(tenant_id, image.data, image.content_type)
        with Image.open(io.BytesIO(image.data)) as decoded:
            width, height = decoded.size
        return ImageRef(
            key=stored.key,
            sha256=stored.sha256,
            content_type=image.content_type,
            width=width,
            height=height,
            size_bytes=stored.size_bytes,
        )

    async def generate_shot(self, command: GenerateShot, msg: NatsMessage) -> None:
        consumer = self.runtime.delivery.consumer("generate-shot")
        if await self.runtime.delivery.is_processed(command, consumer):
            return
        attempt = delivery_count(msg)
        routed, rerouted_from = await self.route(command, msg)
        outcome: GeneratedImage | ShotFailed
        provider = None if isinstance(routed, ShotFailed) else self.providers.get(routed.provider)
        if isinstance(routed, ShotFailed):
            outcome = routed
        elif provider is None:
            outcome = handlers.shot_failed(command, command, "generation", f"unknown provider {command.provider!r}")
        else:
            command = routed

            async def still_working(percent: float, message: str) -> None:
                # A provider's queue can outlast the ack wait: each progress report extends it.
                await msg.in_progress()
                log.debug("shot %s: %.0f%% %s", command.shot_id, percent, message)

            try:
                outcome = await handlers.generate(
                    command,
                    provider=BreakerProvider(provider, self.breakers[provider.name]),
                    references=await self.load_references(command.references),
                    attempt=attempt,
                    max_attempts=self.settings.max_attempts,
                    jobs=PostgresShotJobs(self.runtime.pool),
                    on_progress=still_working,
                )
            except TransientProviderError as error:
                raise RetryLater(str(error), delay_s=error.retry_after_s or backoff_s(attempt)) from error
        stored = None if isinstance(outcome, ShotFailed) else await self.store_image(command.tenant_id, outcome)
        async with self.runtime.delivery.unit_of_work(command, consumer) as work:
            if work.already_done:
                return
            if isinstance(outcome, ShotFailed):
                work.emit(outcome)
            else:
                assert stored is not None
                work.emit(handlers.shot_generated(command, outcome, stored, attempt, rerouted_from))
