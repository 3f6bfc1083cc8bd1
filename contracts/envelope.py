"""The one envelope every Likeness message carries, and how follow-up events are derived."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Follow-up event ids are derived from their cause, so a handler that runs twice
# (a crash after the work, before the ack) emits the very same event ids, and
# JetStream's duplicate window plus every consumer's processed-event table drop the copy.
EVENT_ID_NAMESPACE = UUID("6f1f8a52-0c57-4d5e-9b43-4a3f5c1d2e90")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every value object inside an event: frozen, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Message):
    """Envelope fields shared by every event and command.

    Subclasses set `subject` (``likeness.<entity>.<event>.v<version>``) and narrow
    `type` to a Literal of their own class name.
    """

    subject: ClassVar[str]

    event_id: UUID = Field(default_factory=uuid.uuid4, description="Unique id; also the Nats-Msg-Id.")
    occurred_at: AwareDatetime = Field(default_factory=utc_now, description="When it happened (UTC).")
    correlation_id: UUID = Field(description="The character this event belongs to (its character id).")
    causation_id: UUID | None = Field(default=None, description="The event that caused this one.")
    tenant_id: str = Field(min_length=1, max_length=64, description="The studio (tenant) that owns it.")
    type: str
    version: int = Field(default=1, ge=1)

    @classmethod
    def event_type(cls) -> str:
        default = cls.model_fields["type"].default
        assert isinstance(default, str), f"{cls.__name__} must give `type` a default"
        return default

    @classmethod
    def follow(cls, cause: Event, *, key: str = "", **fields: Any) -> Self:
        """Build the event that `cause` leads to, with a deterministic id.

        `key` tells apart several events of one type caused by the same event
        (for example one GenerateShot per waiting shot).
        """
        event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"{cause.event_id}:{cls.event_type()}:{key}")
        return cls(
            event_id=event_id,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            tenant_id=cause.tenant_id,
            **fields,
        )
