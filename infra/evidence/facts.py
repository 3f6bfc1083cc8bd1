"""The inputs of every report: one fact per shot and one per identity, as read from the system of record.

Frozen and validated on creation, so a typo in a status or a negative cost fails where the fact is built,
not as a silently wrong figure in a report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STRATEGIES = ("instant_reference", "lora", "fine_tune")
SHOT_STATUSES = ("requested", "stored", "scored", "failed")
VERDICTS = ("same", "uncertain", "different", "no_face")
IDENTITY_STATES = ("pending", "ready", "failed")
TAKE_REASONS = ("first", "regenerate", "fallback")


def _check_choice(field: str, value: str | None, choices: tuple[str, ...], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}, not {value!r}")


def _check_number(field: str, value: float | None, *, non_negative: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, not {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{field} must be >= 0, not {value!r}")


@dataclass(frozen=True)
class ShotFact:
    """One take of a requested shot: its first, or one of the consistency gate's retakes (`take_reason`
    `regenerate` with the shot's own provider, `fallback` with the policy's). Each take is a shot its provider
    generated (and was paid for); `final` marks the take that is the shot's result. Figures a take does not
    have yet (not scored, failed, no face) are None."""

    character_id: str
    provider: str
    strategy: str  # instant_reference | lora | fine_tune
    scenario: str
    status: str  # requested | stored | scored | failed
    verdict: str | None  # same | uncertain | different | no_face; set exactly when status is "scored"
    face_distance: float | None  # dlib distance to the references: lower = more alike
    clip_image: float | None  # CLIP-I cosine to the references' mean embedding
    clip_text: float | None  # CLIP-T cosine to the prompt
    clip_calibrated: bool  # False: CLIP ran on random weights and its figures mean nothing yet
    latency_ms: float | None  # provider inference time
    cost_usd: float | None
    simulated: bool
    shot_id: str = ""  # the shot the take belongs to ("" where not known)
    take: int = 1
    take_reason: str = "first"  # first | regenerate | fallback
    final: bool = True  # the shot's final take (its result); False for a take the gate replaced, or still open

    def __post_init__(self) -> None:
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("status", self.status, SHOT_STATUSES)
        _check_choice("take_reason", self.take_reason, TAKE_REASONS)
        if self.take < 1:
            raise ValueError(f"take must be 1 or more, not {self.take!r}")
        _check_choice("verdict", self.verdict, VERDICTS, optional=True)
        if (self.status == "scored") != (self.verdict is not None):
            raise ValueError(
                f"a shot has a verdict exactly when it is scored; got status {self.status!r} "
                f"with verdict {self.verdict!r}"
            )
        _check_number("face_distance", self.face_distance, non_negative=True)
        _check_number("clip_image", self.clip_image, non_negative=False)
        _check_number("clip_text", self.clip_text, non_negative=False)
        _check_number("latency_ms", self.latency_ms, non_negative=True)
        _check_number("cost_usd", self.cost_usd, non_negative=True)


@dataclass(frozen=True)
class IdentityFact:
    """One character's identity with one provider (a LoRA, a tune, or an uploaded reference)."""

    character_id: str
    provider: str
    strategy: str  # instant_reference | lora | fine_tune
    state: str  # pending | ready | failed
    training_seconds: float | None
    cost_usd: float | None
    simulated: bool

    def __post_init__(self) -> None:
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("state", self.state, IDENTITY_STATES)
        _check_number("training_seconds", self.training_seconds, non_negative=True)
        _check_number("cost_usd", self.cost_usd, non_negative=True)
