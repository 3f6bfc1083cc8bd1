"""Likeness message contracts: the only place events are defined."""

from contracts.envelope import Event, Message
from contracts.events import (
    ALL_EVENTS,
    EVENTS_BY_SUBJECT,
    CharacterCompleted,
    CharacterRequested,
    GenerateShot,
    HumanVoteCast,
    IdentityFailed,
    IdentityProgress,
    IdentityReady,
    ProviderWebhookReceived,
    ReferencesStored,
    ShotFailed,
    ShotGenerated,
    ShotRequested,
    ShotScored,
    ShotStored,
)
from contracts.values import (
    ArtifactRef,
    ClipScore,
    FaceScore,
    HumanAnswer,
    ImageRef,
    ShotParams,
    ShotScore,
    SimulationNote,
    Strategy,
    Verdict,
)

STREAM_NAME = "LIKENESS"
STREAM_SUBJECTS = ["likeness.>"]

__all__ = [
    "ALL_EVENTS",
    "EVENTS_BY_SUBJECT",
    "STREAM_NAME",
    "STREAM_SUBJECTS",
    "ArtifactRef",
    "CharacterCompleted",
    "CharacterRequested",
    "ClipScore",
    "Event",
    "FaceScore",
    "GenerateShot",
    "HumanAnswer",
    "HumanVoteCast",
    "IdentityFailed",
    "IdentityProgress",
    "IdentityReady",
    "ImageRef",
    "Message",
    "ProviderWebhookReceived",
    "ReferencesStored",
    "ShotFailed",
    "ShotGenerated",
    "ShotParams",
    "ShotRequested",
    "ShotScore",
    "ShotScored",
    "ShotStored",
    "SimulationNote",
    "Strategy",
    "Verdict",
]
