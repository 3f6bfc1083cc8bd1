"""Every message Likeness services exchange. A breaking change is a new class on a new subject."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, field_validator

from contracts.envelope import EVENT_ID_NAMESPACE, Event
from contracts.values import (
    ArtifactRef,
    FailureStage,
    HumanAnswer,
    ImageRef,
    ProviderName,
    RaterName,
    ShotParams,
    ShotScore,
    SimulationNote,
    Strategy,
    TakeReason,
    Verdict,
)

TAKE_DESCRIPTION = "Which take of the shot: 1 is the first; 2 and on are the consistency gate's retakes."


class CharacterRequested(Event):
    """An app submitted a character: its references are in object storage, nothing else is yet."""

    subject = "likeness.character.requested.v1"
    type: Literal["CharacterRequested"] = "CharacterRequested"
    character_id: UUID
    name: str = Field(min_length=1, max_length=200)
    strategy: Strategy
    provider: ProviderName
    references: list[ImageRef] = Field(min_length=1, max_length=20)


class ReferencesStored(Event):
    """The system of record holds the character and its references; an identity can be built."""

    subject = "likeness.references.stored.v1"
    type: Literal["ReferencesStored"] = "ReferencesStored"
    character_id: UUID
    strategy: Strategy
    provider: ProviderName
    references: list[ImageRef] = Field(min_length=1, max_length=20)


class IdentityProgress(Event):
    """Progress of a long identity job (training), for progress bars."""

    subject = "likeness.identity.progress.v1"
    type: Literal["IdentityProgress"] = "IdentityProgress"
    character_id: UUID
    provider: ProviderName
    percent: float = Field(ge=0.0, le=100.0)
    message: str = Field(default="", max_length=500)


class IdentityReady(Event):
    subject = "likeness.identity.ready.v1"
    type: Literal["IdentityReady"] = "IdentityReady"
    character_id: UUID
    provider: ProviderName
    identity_ref: str = Field(description="The provider's handle for the identity (LoRA URL, tune id, ...).")
    training_seconds: float = Field(ge=0.0)
    cost_usd: float = Field(ge=0.0)
    simulated: bool
    weights: ArtifactRef | None = Field(
        default=None,
        description="The trained weights, copied into our object storage, where the provider hands them out "
        "(fal Flux LoRA, Replicate); None for reference-based providers and those that keep weights to themselves.",
    )


class IdentityFailed(Event):
    subject = "likeness.identity.failed.v1"
    type: Literal["IdentityFailed"] = "IdentityFailed"
    character_id: UUID
    provider: ProviderName
    reason: str = Field(max_length=2000)


class ShotRequested(Event):
    subject = "likeness.shot.requested.v1"
    type: Literal["ShotRequested"] = "ShotRequested"
    shot_id: UUID
    character_id: UUID
    params: ShotParams


class GenerateShot(Event):
    """Command to the provider adapter: the identity is ready, make this shot now."""

    subject = "likeness.shot.generate.v1"
    type: Literal["GenerateShot"] = "GenerateShot"
    shot_id: UUID
    character_id: UUID
    provider: ProviderName
    identity_ref: str
    params: ShotParams
    references: list[ImageRef] = Field(min_length=1, max_length=20)
    take: int = Field(default=1, ge=1, description=TAKE_DESCRIPTION)


class ShotGenerated(Event):
    """A provider returned an image and it has been copied into object storage."""

    subject = "likeness.shot.generated.v1"
    type: Literal["ShotGenerated"] = "ShotGenerated"
    shot_id: UUID
    character_id: UUID
    provider: ProviderName
    image: ImageRef
    latency_ms: float = Field(ge=0.0, description="Provider inference time for this shot.")
    cost_usd: float = Field(ge=0.0)
    attempts: int = Field(ge=1, description="Provider calls made, retries included.")
    simulation: SimulationNote | None = Field(
        default=None, description="Present when the offline simulator made the image."
    )
    take: int = Field(default=1, ge=1, description=TAKE_DESCRIPTION)
    rerouted_from: ProviderName | None = Field(
        default=None,
        description="The shot's own provider, when its circuit breaker was open and this provider (its fallback) "
        "made the image instead.",
    )


class ShotStored(Event):
    """The system of record holds the shot; it can be scored against these references."""

    subject = "likeness.shot.stored.v1"
    type: Literal["ShotStored"] = "ShotStored"
    shot_id: UUID
    character_id: UUID
    prompt: str
    image: ImageRef
    references: list[ImageRef] = Field(min_length=1, max_length=20)
    take: int = Field(default=1, ge=1, description=TAKE_DESCRIPTION)


class ShotScored(Event):
    subject = "likeness.shot.scored.v1"
    type: Literal["ShotScored"] = "ShotScored"
    shot_id: UUID
    character_id: UUID
    score: ShotScore
    take: int = Field(default=1, ge=1, description=TAKE_DESCRIPTION)


class ShotFailed(Event):
    subject = "likeness.shot.failed.v1"
    type: Literal["ShotFailed"] = "ShotFailed"
    shot_id: UUID
    character_id: UUID
    stage: FailureStage
    reason: str = Field(max_length=2000)
    take: int = Field(default=1, ge=1, description=TAKE_DESCRIPTION)


class RetakeShot(Event):
    """Command to the provider adapter: storage's consistency gate wants another take of this shot.

    Storage sends it when a take's first score has a gated verdict (`different`, `no_face` by default):
    `regenerate` takes use the shot's own provider with a new seed (derived from the shot id and the take
    number); the one `fallback` take after them uses the fallback provider the policy names. The event id
    is derived from the score that caused it, so a redelivered score asks for the same take once.
    """

    subject = "likeness.shot.retake.v1"
    type: Literal["RetakeShot"] = "RetakeShot"
    shot_id: UUID
    character_id: UUID
    take: int = Field(ge=2, description="The take to make (the shot's first take is 1).")
    reason: TakeReason = Field(description="regenerate: the shot's own provider again; fallback: the policy's.")
    provider: ProviderName = Field(description="The provider to make this take with.")
    fallback_from: ProviderName | None = Field(
        default=None, description="For a fallback take: the provider whose takes the gate gave up on."
    )
    previous_verdict: Verdict = Field(description="The verdict of the take before, which the gate acted on.")
    params: ShotParams = Field(description="The shot's parameters with this take's seed.")
    references: list[ImageRef] = Field(min_length=1, max_length=20)


class CharacterCompleted(Event):
    """Every shot requested so far has a verdict or has failed."""

    subject = "likeness.character.completed.v1"
    type: Literal["CharacterCompleted"] = "CharacterCompleted"
    character_id: UUID
    shots_total: int = Field(ge=0)
    shots_scored: int = Field(ge=0)
    shots_failed: int = Field(ge=0)
    verdicts: dict[Verdict, int]


class HumanVoteCast(Event):
    """A person's judgement of one shot: does it show the same character as the references?

    One vote per rater per shot counts: a rater who votes again on a shot changes their answer.
    """

    subject = "likeness.shot.voted.v1"
    type: Literal["HumanVoteCast"] = "HumanVoteCast"
    shot_id: UUID
    character_id: UUID
    rater: RaterName
    answer: HumanAnswer


WEBHOOK_PAYLOAD_MAX_BYTES = 16 * 1024
WEBHOOK_TENANT = "provider-webhook"


class ProviderWebhookReceived(Event):
    """A provider's webhook passed its own check (signature, token or key) at the gateway.

    The gateway cannot know the character or tenant a delivery is about: `tenant_id` is
    `provider-webhook` and `correlation_id` is derived from the provider and its job id. The
    provider adapter finds the identity whose saved job names `job_id`. Published with
    `Nats-Msg-Id: <provider>:<delivery_id>`, so a redelivery inside the duplicate window is dropped.
    """

    subject = "likeness.provider.webhook.v1"
    type: Literal["ProviderWebhookReceived"] = "ProviderWebhookReceived"
    provider: ProviderName
    delivery_id: str = Field(
        min_length=1,
        max_length=200,
        description="The provider's delivery id (webhook-id header), or the sha256 of the body where it sends none.",
    )
    job_id: str | None = Field(
        default=None,
        max_length=200,
        description="The provider's job the payload names: Replicate training or prediction id, Astria tune or "
        "prompt id, Leonardo generation id.",
    )
    job_kind: str | None = Field(
        default=None, max_length=50, description="What the job is where the provider says: tune, prompt, ..."
    )
    status: str | None = Field(default=None, max_length=100, description="The job's status as the provider wrote it.")
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=f"The verified JSON body, bounded to {WEBHOOK_PAYLOAD_MAX_BYTES} bytes (large fields dropped); "
        "never headers or secrets.",
    )

    @field_validator("payload")
    @classmethod
    def _bounded(cls, payload: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(payload, default=str))
        if size > WEBHOOK_PAYLOAD_MAX_BYTES:
            raise ValueError(f"payload is {size} bytes; bound it to {WEBHOOK_PAYLOAD_MAX_BYTES}")
        return payload


CostThreshold = Literal[80, 100]
COST_ALERT_THRESHOLDS: tuple[CostThreshold, ...] = (80, 100)


class CostAlert(Event):
    """A tenant's recorded spend this calendar month (UTC) reached 80% or 100% of its monthly budget.

    At 100% the gateway refuses new characters and shots for the tenant until the budget is raised
    (`likeness budgets set`) or the month ends; work already accepted goes on. Storage publishes it in the
    transaction that records the cost, once per tenant, month and threshold: the event id is derived from
    the three (`CostAlert.reached`). Costs priced by the offline simulator count; `simulated_usd` says how much.
    `correlation_id` is the character whose cost crossed the threshold.
    """

    subject = "likeness.tenant.cost_alert.v1"
    type: Literal["CostAlert"] = "CostAlert"
    month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="The calendar month (UTC), YYYY-MM.")
    threshold_percent: CostThreshold = Field(description="The share of the budget reached.")
    budget_usd: float = Field(ge=0.0, description="The tenant's monthly budget when the threshold was reached.")
    spend_usd: float = Field(
        ge=0.0, description="Recorded spend this month (shots and identities), simulated included."
    )
    simulated_usd: float = Field(
        ge=0.0, description="The part of spend_usd priced by the offline simulator: no provider was paid for it."
    )
    message: str = Field(max_length=1000, description="The alert in one or two sentences, with what to do.")

    @classmethod
    def reached(
        cls,
        cause: Event,
        *,
        month: str,
        threshold_percent: CostThreshold,
        budget_usd: float,
        spend_usd: float,
        simulated_usd: float,
    ) -> CostAlert:
        """The alert for (cause's tenant, month, threshold), whichever cost event crosses it: the same id every time."""
        event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"CostAlert:{cause.tenant_id}:{month}:{threshold_percent}")
        action = (
            "new characters and shots are refused until the budget is raised (`likeness budgets set`) "
            "or the month ends; work already accepted goes on"
            if threshold_percent >= 100
            else "at 100% new characters and shots will be refused"
        )
        simulated = (
            f" ${simulated_usd:.2f} of it is simulated (priced by the offline simulator; nobody was paid)."
            if simulated_usd > 0
            else ""
        )
        return cls(
            event_id=event_id,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            tenant_id=cause.tenant_id,
            month=month,
            threshold_percent=threshold_percent,
            budget_usd=budget_usd,
            spend_usd=spend_usd,
            simulated_usd=simulated_usd,
            message=f"Tenant {cause.tenant_id} has spent ${spend_usd:.2f} of its ${budget_usd:.2f} budget for "
            f"{month} ({threshold_percent}% reached): {action}.{simulated}",
        )


# The tenant of a dead letter whose message could not be read (a real tenant starts with a letter or digit).
UNREADABLE_TENANT = "_unreadable"


class MessageDeadLettered(Event):
    """A consumer gave up on a message after its last allowed delivery (`max_deliver`).

    The message, its headers and the error are kept in `messaging.dead_letters`; `likeness dlq` shows,
    redrives or drops it. `correlation_id` and `tenant_id` are the message's own when it could be read;
    for an unreadable (poison) message they are this event's id and `_unreadable`. One per consumer and
    stream sequence: the event id is derived from the two.
    """

    subject = "likeness.message.dead_lettered.v1"
    type: Literal["MessageDeadLettered"] = "MessageDeadLettered"
    service: str = Field(description="The service whose consumer gave up.")
    consumer: str = Field(description="The durable JetStream consumer, e.g. scoring-shot-stored-<key>.")
    message_subject: str = Field(description="The subject the message was published on.")
    stream_seq: int = Field(ge=1, description="The message's sequence in the LIKENESS stream.")
    message_event_id: UUID | None = Field(description="The message's event id; null when it could not be read.")
    deliveries: int = Field(ge=1)
    error: str = Field(max_length=8000, description="The last error, as the handler raised it.")
    dead_letter_id: int | None = Field(description="The row in messaging.dead_letters (`likeness dlq show ID`).")

    @classmethod
    def of(
        cls,
        *,
        service: str,
        consumer: str,
        message_subject: str,
        stream_seq: int,
        message_event_id: UUID | None,
        correlation_id: UUID | None,
        tenant_id: str | None,
        deliveries: int,
        error: str,
        dead_letter_id: int | None,
    ) -> MessageDeadLettered:
        event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"MessageDeadLettered:{consumer}:{stream_seq}")
        return cls(
            event_id=event_id,
            correlation_id=correlation_id or event_id,
            causation_id=message_event_id,
            tenant_id=tenant_id or UNREADABLE_TENANT,
            service=service,
            consumer=consumer,
            message_subject=message_subject,
            stream_seq=stream_seq,
            message_event_id=message_event_id,
            deliveries=deliveries,
            error=error[:8000],
            dead_letter_id=dead_letter_id,
        )


ALL_EVENTS: tuple[type[Event], ...] = (
    CharacterRequested,
    ReferencesStored,
    IdentityProgress,
    IdentityReady,
    IdentityFailed,
    ShotRequested,
    GenerateShot,
    ShotGenerated,
    ShotStored,
    ShotScored,
    ShotFailed,
    RetakeShot,
    CharacterCompleted,
    HumanVoteCast,
    ProviderWebhookReceived,
    CostAlert,
    MessageDeadLettered,
)

EVENTS_BY_SUBJECT: dict[str, type[Event]] = {event.subject: event for event in ALL_EVENTS}
