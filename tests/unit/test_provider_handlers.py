import uuid

from contracts import (
    GenerateShot,
    ReferencesStored,
    ShotFailed,
    ShotParams,
    ShotRequested,
)
from services.provider_adapter import handlers
from services.provider_adapter.ports import IdentityStatus
from tests.fakes import FakeIdentities, image_ref


def references_stored() -> ReferencesStored:
    character_id = uuid.uuid4()
    return ReferencesStored(
        correlation_id=character_id,
        tenant_id="studio",
        character_id=character_id,
        strategy="instant_reference",
        provider="sim",
        references=[image_ref()],
    )


def shot(character: ReferencesStored) -> ShotRequested:
    return ShotRequested(
        correlation_id=character.character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character.character_id,
        params=ShotParams(prompt="noir", seed=3),
    )


async def test_shots_wait_for_the_identity_then_are_released_once() -> None:
    identities = FakeIdentities()
    refs = references_stored()
    early = shot(refs)
    assert await handlers.on_shot_requested(early, identities=identities) == []  # before the references
    await identities.lock(refs.character_id, "studio")
    await identities.begin(refs.character_id, "sim", "instant_reference", refs.references)
    ready = IdentityStatus(state="ready", identity_ref="sim:job", training_seconds=1.0)
    emitted = await handlers.identity_settled(refs, ready, identities=identities, simulated=True)
    assert [e.type for e in emitted] == ["IdentityReady", "GenerateShot"]
    command = emitted[1]
    assert isinstance(command, GenerateShot)
    assert command.shot_id == early.shot_id
    assert command.identity_ref == "sim:job"
    assert command.references == refs.references
    assert identities.waiting == {}


async def test_a_shot_after_the_identity_is_ready_is_generated_at_once() -> None:
    identities = FakeIdentities()
    refs = references_stored()
    await identities.lock(refs.character_id, "studio")
    await identities.begin(refs.character_id, "sim", "instant_reference", refs.references)
    await handlers.identity_settled(
        refs, IdentityStatus(state="ready", identity_ref="sim:x"), identities=identities, simulated=True
    )
    emitted = await handlers.on_shot_requested(shot(refs), identities=identities)
    assert [e.type for e in emitted] == ["GenerateShot"]


async def test_a_failed_identity_fails_every_waiting_shot_with_its_reason() -> None:
    identities = FakeIdentities()
    refs = references_stored()
    waiting = [shot(refs), shot(refs)]
    for s in waiting:
        await handlers.on_shot_requested(s, identities=identities)
    await identities.begin(refs.character_id, "sim", "instant_reference", refs.references)
    failed = IdentityStatus(state="failed", reason="training diverged")
    emitted = await handlers.identity_settled(refs, failed, identities=identities, simulated=True)
    assert [e.type for e in emitted] == ["IdentityFailed", "ShotFailed", "ShotFailed"]
    assert all("training diverged" in e.reason for e in emitted if isinstance(e, ShotFailed))
    later = await handlers.on_shot_requested(shot(refs), identities=identities)
    assert [e.type for e in later] == ["ShotFailed"]
