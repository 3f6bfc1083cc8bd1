"""What the storage handlers need from the system of record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from contracts import (
    CharacterRequested,
    CostAlert,
    Event,
    HumanVoteCast,
    IdentityReady,
    ImageRef,
    ShotGenerated,
    ShotParams,
    ShotRequested,
    ShotScored,
)
from services.storage.gate import NextTake


@dataclass(frozen=True)
class CharacterRecord:
    character_id: UUID
    tenant_id: str
    provider: str
    status: str


@dataclass(frozen=True)
class ShotState:
    """A shot as the consistency gate sees it: its current take and that take's status."""

    shot_id: UUID
    take: int
    status: str  # requested | stored | scored | failed: the current take's
    params: ShotParams


@dataclass(frozen=True)
class ShotCounts:
    total: int
    scored: int
    failed: int
    verdicts: dict[str, int]

    @property
    def open(self) -> int:
        return self.total - self.scored - self.failed


@dataclass(frozen=True)
class MonthSpend:
    """A tenant's monthly budget and what storage has recorded against it this calendar month (UTC)."""

    month: str  # YYYY-MM
    budget_usd: float
    spend_usd: float  # shots and identities, simulated costs included
    simulated_usd: float  # the part priced by the offline simulator


class Records(Protocol):
    async def add_character(self, event: CharacterRequested) -> None: ...

    async def character(self, character_id: UUID, *, lock: bool = False) -> CharacterRecord | None: ...

    async def references(self, character_id: UUID) -> list[ImageRef]: ...

    async def set_identity_progress(self, character_id: UUID, percent: float) -> None: ...

    async def mark_identity_ready(self, event: IdentityReady) -> None: ...

    async def mark_identity_failed(self, character_id: UUID, reason: str) -> None: ...

    async def set_character_status(self, character_id: UUID, status: str) -> None: ...

    async def add_shot(self, event: ShotRequested, provider: str) -> None: ...

    async def shot_exists(self, shot_id: UUID) -> bool: ...

    async def mark_shot_stored(self, event: ShotGenerated) -> str | None:
        """Record the image; return the shot's prompt, or None when the shot is unknown."""
        ...

    async def add_score(self, event: ShotScored) -> bool:
        """Keep the score (once per take and scorer key); True when it is the take's first (the gate acts on it)."""
        ...

    async def shot_state(self, shot_id: UUID) -> ShotState | None: ...

    async def begin_take(self, shot_id: UUID, next_take: NextTake, requested_at: datetime) -> None:
        """Record the shot's next take (requested) and make it the shot's current one: the shot is open again."""
        ...

    async def finish_shot(self, shot_id: UUID, take: int, finished_at: datetime) -> bool:
        """The shot is scored with `take` as its final take; True the first time."""
        ...

    async def mark_shot_failed(self, shot_id: UUID, stage: str, reason: str, take: int = 1) -> None:
        """The take failed; so does the shot when it is the shot's current take."""
        ...

    async def shot_counts(self, character_id: UUID) -> ShotCounts: ...

    async def shot_tenant(self, shot_id: UUID) -> str | None:
        """The tenant that owns the shot, or None when the shot is not recorded."""
        ...

    async def record_vote(self, event: HumanVoteCast) -> None:
        """Keep the rater's answer for the shot; a later vote replaces an earlier one, never the reverse."""
        ...

    async def month_spend(self, tenant_id: str) -> MonthSpend | None:
        """The tenant's budget and spend this month, counted after every other cost of the tenant being recorded
        now has committed (costs are recorded one at a time per budgeted tenant); None: no budget, no limit."""
        ...

    async def record_cost_alert(self, alert: CostAlert) -> bool:
        """Keep the alert; True when it is the first for its tenant, month and threshold (then it is sent)."""
        ...

    async def log_events(self, events: list[Event], character_id: UUID) -> None: ...
