"""The consistency gate's decision: after a take's first score, is another take due, and which?

Pure: the verdict, the take number and the policy in; the next take (or none) out. A shot's first take is
the app's own request. A take judged with a gated verdict (`different`, `no_face` by default) is made
again with the shot's own provider and a new seed, up to `max_regenerations` times; after the last of
those, once with the fallback provider the policy names for the shot's provider, if it names one. The
seed of take n > 1 is derived from the shot id and n, so a redelivered score decides the very same take.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from contracts.values import TakeReason

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Gate:
    max_regenerations: int = 2  # 0: the gate is off (no regeneration, no fallback)
    verdicts: frozenset[str] = frozenset({"different", "no_face"})
    fallback: Mapping[str, str] = field(default_factory=dict)  # provider -> fallback provider


@dataclass(frozen=True)
class NextTake:
    take: int
    reason: TakeReason
    provider: str
    seed: int
    fallback_from: str | None = None


def take_seed(shot_id: UUID, take: int) -> int:
    """The seed of a retake: a stable function of the shot and the take number, in [0, 2**32 - 1]."""
    digest = hashlib.sha256(f"likeness-take:{shot_id}:{take}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & MAX_SEED


def next_take(gate: Gate, *, shot_id: UUID, take: int, verdict: str, own_provider: str) -> NextTake | None:
    """The take after `take` (judged `verdict`) of a shot whose own provider is `own_provider`; None: it is final."""
    if gate.max_regenerations <= 0 or verdict not in gate.verdicts:
        return None
    following = take + 1
    if take <= gate.max_regenerations:  # takes 2 .. max_regenerations + 1 regenerate
        return NextTake(following, "regenerate", own_provider, take_seed(shot_id, following))
    fallback = gate.fallback.get(own_provider)
    if take == gate.max_regenerations + 1 and fallback is not None and fallback != own_provider:
        return NextTake(following, "fallback", fallback, take_seed(shot_id, following), fallback_from=own_provider)
    return None
