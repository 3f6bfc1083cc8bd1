"""Hand-written fakes of the services' ports, for unit tests (no I/O)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
from PIL import Image

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
from contracts.values import FaceNote
from services.provider_adapter.ports import IdentityRecord, ReferenceImage
from services.scoring.ports import FaceCandidate, FaceObservation
from services.storage.gate import NextTake
from services.storage.ports import CharacterRecord, MonthSpend, ShotCounts, ShotState


def image_ref(tenant: str = "studio", seed: int = 0) -> ImageRef:
    sha = uuid.UUID(int=seed).hex * 2
    return ImageRef(
        key=f"{tenant}/images/{sha}", sha256=sha, content_type="image/png", width=512, height=512, size_bytes=1000
    )


def reference_image(data: bytes, *, key: str = "ref.png", width: int = 512, height: int = 512) -> ReferenceImage:
    """A reference as the provider adapter loads it: claim check and bytes (which need not decode)."""
    ref = ImageRef(
        key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="image/png",
        width=width,
        height=height,
        size_bytes=max(1, len(data)),
    )
    return ReferenceImage(ref=ref, data=data)


class RecordingSleep:
    """An injected sleep: remembers every wait asked for, and really waits at most `pace_s` of it."""

    def __init__(self, pace_s: float = 0.0) -> None:
        self.pace_s = pace_s
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(min(seconds, self.pace_s))


def character_requested(tenant: str = "studio") -> CharacterRequested:
    """A new character with one reference, under random ids."""
    character_id = uuid.uuid4()
    return CharacterRequested(
        correlation_id=character_id,
        tenant_id=tenant,
        character_id=character_id,
        name="Sarah",
        strategy="instant_reference",
        provider="sim",
        references=[image_ref(tenant)],
    )


@dataclass
class FakeRecords:
    """storage.ports.Records in memory."""

    characters: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    refs: dict[UUID, list[ImageRef]] = field(default_factory=dict)
    shots: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    scores: list[ShotScored] = field(default_factory=list)
    log: list[Event] = field(default_factory=list)
    votes: dict[tuple[UUID, str], HumanVoteCast] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)  # tenant -> monthly USD (set by `likeness budgets`)
    month: str = "2026-11"  # the calendar month (UTC) costs are recorded in now
    costs: dict[UUID, tuple[str, str, float, bool]] = field(default_factory=dict)  # shot/character id -> cost
    cost_alerts: dict[tuple[str, str, int], CostAlert] = field(default_factory=dict)
    takes: dict[tuple[UUID, int], dict[str, Any]] = field(default_factory=dict)  # (shot id, take) -> the take

    async def add_character(self, event: CharacterRequested) -> None:
        self.characters.setdefault(
            event.character_id,
            {"tenant_id": event.tenant_id, "provider": event.provider, "status": "building_identity"},
        )
        self.refs.setdefault(event.character_id, list(event.references))

    async def character(self, character_id: UUID, *, lock: bool = False) -> CharacterRecord | None:
        row = self.characters.get(character_id)
        return None if row is None else CharacterRecord(character_id=character_id, **row)

    async def references(self, character_id: UUID) -> list[ImageRef]:
        return self.refs[character_id]

    async def set_identity_progress(self, character_id: UUID, percent: float) -> None:
        self.characters[character_id]["percent"] = percent

    async def mark_identity_ready(self, event: IdentityReady) -> None:
        self.characters[event.character_id]["status"] = "ready"
        month = self.costs[event.character_id][1] if event.character_id in self.costs else self.month
        self.costs[event.character_id] = (event.tenant_id, month, event.cost_usd, event.simulated)

    async def mark_identity_failed(self, character_id: UUID, reason: str) -> None:
        self.characters[character_id]["status"] = "identity_failed"

    async def set_character_status(self, character_id: UUID, status: str) -> None:
        self.characters[character_id]["status"] = status

    async def add_shot(self, event: ShotRequested, provider: str) -> None:
        self.shots.setdefault(
            event.shot_id,
            {
                "character_id": event.character_id,
                "tenant_id": event.tenant_id,
                "status": "requested",
                "prompt": event.params.prompt,
                "params": event.params,
                "take": 1,
            },
        )
        self.takes.setdefault(
            (event.shot_id, 1),
            {"status": "requested", "provider": provider, "seed": event.params.seed, "reason": "first"},
        )

    async def shot_tenant(self, shot_id: UUID) -> str | None:
        shot = self.shots.get(shot_id)
        return None if shot is None else str(shot["tenant_id"])

    async def record_vote(self, event: HumanVoteCast) -> None:
        kept = self.votes.get((event.shot_id, event.rater))
        if kept is None or kept.occurred_at <= event.occurred_at:
            self.votes[(event.shot_id, event.rater)] = event

    async def shot_exists(self, shot_id: UUID) -> bool:
        return shot_id in self.shots

    async def mark_shot_stored(self, event: ShotGenerated) -> str | None:
        take = self.takes.get((event.shot_id, event.take))
        if take is not None and take["status"] in ("requested", "stored"):
            take.update(status="stored", provider=event.provider, cost_usd=event.cost_usd)
        shot = self.shots.get(event.shot_id)
        if shot is None or shot["status"] not in ("requested", "stored") or shot["take"] != event.take:
            return None
        shot["status"] = "stored"
        self.costs[event.shot_id if event.take == 1 else uuid.uuid5(event.shot_id, str(event.take))] = (
            shot["tenant_id"],
            self.month,
            event.cost_usd,
            event.simulation is not None,
        )
        return str(shot["prompt"])

    async def add_score(self, event: ShotScored) -> bool:
        key = (event.shot_id, event.take, event.score.scorer_key)
        if all((kept.shot_id, kept.take, kept.score.scorer_key) != key for kept in self.scores):
            self.scores.append(event)
        take = self.takes.setdefault((event.shot_id, event.take), {"status": "stored"})
        if take["status"] in ("scored", "failed"):
            return False
        take.update(status="scored", verdict=event.score.verdict)
        return True

    async def shot_state(self, shot_id: UUID) -> ShotState | None:
        shot = self.shots.get(shot_id)
        if shot is None:
            return None
        params = shot.get("params") or ShotParams(prompt=str(shot["prompt"]))
        return ShotState(shot_id, int(shot.get("take", 1)), str(shot["status"]), params)

    async def begin_take(self, shot_id: UUID, next_take: NextTake, requested_at: datetime) -> None:
        self.takes.setdefault(
            (shot_id, next_take.take),
            {"status": "requested", "provider": next_take.provider, "seed": next_take.seed, "reason": next_take.reason},
        )
        shot = self.shots[shot_id]
        if shot.get("take", 1) < next_take.take:
            shot.update(take=next_take.take, status="requested")

    async def finish_shot(self, shot_id: UUID, take: int, finished_at: datetime) -> bool:
        shot = self.shots[shot_id]
        if shot.get("take", 1) != take or shot["status"] in ("scored", "failed"):
            return False
        shot.update(status="scored", verdict=self.takes[(shot_id, take)].get("verdict"))
        return True

    async def mark_shot_failed(self, shot_id: UUID, stage: str, reason: str, take: int = 1) -> None:
        kept = self.takes.get((shot_id, take))
        if kept is not None and kept["status"] != "scored":
            kept.update(status="failed", failure=reason)
        shot = self.shots.get(shot_id)
        if shot is not None and shot["status"] != "scored" and shot.get("take", 1) == take:
            shot["status"] = "failed"

    async def shot_counts(self, character_id: UUID) -> ShotCounts:
        mine = [s for s in self.shots.values() if s["character_id"] == character_id]
        verdicts: dict[str, int] = {}
        for shot in mine:
            if "verdict" in shot:
                verdicts[shot["verdict"]] = verdicts.get(shot["verdict"], 0) + 1
        return ShotCounts(
            total=len(mine),
            scored=sum(s["status"] == "scored" for s in mine),
            failed=sum(s["status"] == "failed" for s in mine),
            verdicts=verdicts,
        )

    async def month_spend(self, tenant_id: str) -> MonthSpend | None:
        if tenant_id not in self.budgets:
            return None
        mine = [
            (usd, simulated)
            for tenant, month, usd, simulated in self.costs.values()
            if (tenant, month) == (tenant_id, self.month)
        ]
        return MonthSpend(
            month=self.month,
            budget_usd=self.budgets[tenant_id],
            spend_usd=sum(usd for usd, _ in mine),
            simulated_usd=sum(usd for usd, simulated in mine if simulated),
        )

    async def record_cost_alert(self, alert: CostAlert) -> bool:
        key = (alert.tenant_id, alert.month, alert.threshold_percent)
        if key in self.cost_alerts:
            return False
        self.cost_alerts[key] = alert
        return True

    async def log_events(self, events: list[Event], character_id: UUID) -> None:
        self.log.extend(events)


@dataclass
class FakeIdentities:
    """provider_adapter.ports.Identities in memory."""

    rows: dict[UUID, IdentityRecord] = field(default_factory=dict)
    waiting: dict[UUID, list[ShotRequested]] = field(default_factory=dict)

    async def lock(self, character_id: UUID, tenant_id: str) -> IdentityRecord:
        return self.rows.setdefault(
            character_id,
            IdentityRecord(character_id, tenant_id, None, "awaiting_references", None, None, [], None),
        )

    async def begin(self, character_id: UUID, provider: str, strategy: str, references: list[ImageRef]) -> None:
        row = self.rows[character_id]
        if row.status == "awaiting_references":
            self.rows[character_id] = replace(row, provider=provider, status="pending", references=references)

    async def set_job_id(self, character_id: UUID, job_id: str) -> None:
        self.rows[character_id] = replace(self.rows[character_id], job_id=job_id)

    async def mark_ready(self, character_id: UUID, identity_ref: str) -> None:
        self.rows[character_id] = replace(self.rows[character_id], status="ready", identity_ref=identity_ref)

    async def mark_failed(self, character_id: UUID, reason: str) -> None:
        self.rows[character_id] = replace(self.rows[character_id], status="failed", failure=reason)

    async def add_waiting(self, shot: ShotRequested) -> None:
        self.waiting.setdefault(shot.character_id, []).append(shot)

    async def take_waiting(self, character_id: UUID) -> list[ShotRequested]:
        return self.waiting.pop(character_id, [])


# --- scoring: models ---------------------------------------------------------------------------


def pixels_key(image: Image.Image) -> str:
    """Identifies an image by its pixels, so fakes answer the same for equal copies."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def swatch(seed: int, size: int = 8) -> Image.Image:
    """A small image of its own: distinct seeds give distinct pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@dataclass
class FakeFaceEmbedder:
    """scoring.ports.FaceEmbedder: answers what a test registered for an image; no face otherwise.

    Register one `descriptor`, or several `candidates` (the primary face first); like the real
    embedder, `observe` describes at most `max_candidates` of them and records what it was asked.
    """

    model_name: str = "fake-face-v1"
    observations: dict[str, FaceObservation] = field(default_factory=dict)
    observed: int = 0
    max_candidates_asked: list[int] = field(default_factory=list)

    def register(
        self,
        image: Image.Image,
        descriptor: Sequence[float] | None = None,
        faces_found: int | None = None,
        *,
        candidates: Sequence[Sequence[float]] | None = None,
        notes: Sequence[FaceNote] = (),
    ) -> None:
        if descriptor is not None and candidates is not None:
            raise ValueError("register one descriptor or several candidates, not both")
        descriptors = list(candidates or ([] if descriptor is None else [descriptor]))
        self.observations[pixels_key(image)] = FaceObservation(
            faces_found=len(descriptors) if faces_found is None else faces_found,
            candidates=tuple(
                FaceCandidate(
                    descriptor=np.asarray(values, dtype=np.float32),
                    box=(index, 0, image.width, image.height),
                    detector_score=1.0 - index / 10,
                )
                for index, values in enumerate(descriptors)
            ),
            notes=tuple(notes) if descriptors else (),
        )

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        if max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        self.observed += 1
        self.max_candidates_asked.append(max_candidates)
        seen = self.observations.get(pixels_key(image), FaceObservation(faces_found=0))
        return replace(seen, candidates=seen.candidates[:max_candidates])


@dataclass
class FakeImageEmbedder:
    """scoring.ports.ImageEmbedder: registered vectors (normalised), else the first axis; records batches."""

    model_name: str = "fake-clip-v1"
    calibrated: bool = False
    dimension: int = 4
    vectors: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)

    def register(self, image: Image.Image, vector: Sequence[float]) -> None:
        array = np.asarray(vector, dtype=np.float32)
        assert array.shape == (self.dimension,)
        self.vectors[pixels_key(image)] = array / np.linalg.norm(array)

    def embed(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        self.batches.append(len(images))
        default = np.eye(self.dimension, dtype=np.float32)[0]
        rows = [self.vectors.get(pixels_key(image), default) for image in images]
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)


@dataclass
class FakeTextEmbedder:
    """scoring.ports.TextEmbedder: registered vectors (normalised), else the first axis; records batches."""

    dimension: int = 4
    vectors: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)

    def register(self, text: str, vector: Sequence[float]) -> None:
        array = np.asarray(vector, dtype=np.float32)
        assert array.shape == (self.dimension,)
        self.vectors[text] = array / np.linalg.norm(array)

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        default = np.eye(self.dimension, dtype=np.float32)[0]
        rows = [self.vectors.get(text, default) for text in texts]
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)
