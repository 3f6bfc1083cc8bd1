"""The consistency gate: a take judged `different` or `no_face` is made again with a new seed, up to N times,
then once by the fallback provider; every take is kept, and the character completes on the final take."""

from __future__ import annotations

import uuid

import pytest

from contracts import (
    CharacterCompleted,
    CharacterRequested,
    Event,
    RetakeShot,
    ShotFailed,
    ShotGenerated,
    ShotRequested,
    ShotScored,
    ShotStored,
    Verdict,
)
from contracts.values import ShotParams, TakeReason
from infra.evidence.facts import ShotFact
from infra.evidence.summary import GateSummary, gate_summary, summarize
from services.provider_adapter import handlers as adapter
from services.provider_adapter.ports import IdentityRecord
from services.provider_adapter.providers.sim import SimProvider
from services.storage import handlers
from services.storage.gate import Gate, next_take, take_seed
from services.storage.settings import StorageSettings
from tests.fakes import FakeRecords, character_requested, image_ref
from tests.unit.test_storage_handlers import scored

POLICY = Gate(max_regenerations=2, fallback={"sim": "fal-instant-character"})
SHOT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def decide(gate: Gate, take: int, verdict: str) -> tuple[int, str, str, str | None] | None:
    following = next_take(gate, shot_id=SHOT, take=take, verdict=verdict, own_provider="sim")
    return (
        None if following is None else (following.take, following.reason, following.provider, following.fallback_from)
    )


@pytest.mark.parametrize("verdict", ["same", "uncertain"])
def test_a_take_judged_same_or_uncertain_is_final(verdict: str) -> None:
    assert decide(POLICY, 1, verdict) is None
    assert decide(POLICY, 2, verdict) is None


@pytest.mark.parametrize("verdict", ["different", "no_face"])
def test_a_gated_take_is_regenerated_n_times_then_handed_to_the_fallback_once(verdict: str) -> None:
    assert decide(POLICY, 1, verdict) == (2, "regenerate", "sim", None)
    assert decide(POLICY, 2, verdict) == (3, "regenerate", "sim", None)
    assert decide(POLICY, 3, verdict) == (4, "fallback", "fal-instant-character", "sim")
    assert decide(POLICY, 4, verdict) is None  # the fallback's take is final, whatever it shows


def test_without_a_fallback_for_the_provider_the_last_regeneration_is_final() -> None:
    gate = Gate(max_regenerations=1, fallback={"fal-flux-lora": "fal-instant-character"})
    assert decide(gate, 1, "different") == (2, "regenerate", "sim", None)
    assert decide(gate, 2, "different") is None


def test_zero_regenerations_turns_the_gate_off_fallback_included() -> None:
    gate = Gate(max_regenerations=0, fallback={"sim": "fal-instant-character"})
    assert decide(gate, 1, "different") is None
    assert decide(gate, 1, "no_face") is None


def test_only_the_configured_verdicts_are_gated() -> None:
    gate = Gate(max_regenerations=2, verdicts=frozenset({"no_face"}))
    assert decide(gate, 1, "different") is None
    assert decide(gate, 1, "no_face") == (2, "regenerate", "sim", None)


def test_retake_seeds_are_derived_from_the_shot_and_the_take() -> None:
    seeds = [take_seed(SHOT, take) for take in (2, 3, 4)]
    assert seeds == [take_seed(SHOT, take) for take in (2, 3, 4)]  # the same decision on a redelivery
    assert len(set(seeds)) == 3
    assert take_seed(uuid.uuid4(), 2) != seeds[0]
    assert all(0 <= seed <= 2**32 - 1 for seed in seeds)
    following = next_take(POLICY, shot_id=SHOT, take=1, verdict="different", own_provider="sim")
    assert following is not None
    assert following.seed == seeds[0]


def test_settings_read_the_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LIKENESS_FALLBACK", '{"fal-flux-lora": "fal-instant-character", "fal-instant-character": "sim"}'
    )
    monkeypatch.setenv("LIKENESS_STORAGE_GATE_VERDICTS", "different")
    monkeypatch.setenv("LIKENESS_STORAGE_GATE_MAX_REGENERATIONS", "3")
    gate = StorageSettings().gate()
    assert gate == Gate(
        3, frozenset({"different"}), {"fal-flux-lora": "fal-instant-character", "fal-instant-character": "sim"}
    )
    assert StorageSettings(_env_file=None).gate_max_regenerations == 3
    monkeypatch.setenv("LIKENESS_STORAGE_GATE_VERDICTS", "different,blurry")
    with pytest.raises(ValueError, match="blurry"):
        StorageSettings()
    monkeypatch.setenv("LIKENESS_STORAGE_GATE_VERDICTS", "different")
    monkeypatch.setenv("LIKENESS_FALLBACK", '{"sim": "sim"}')
    with pytest.raises(ValueError, match="its own fallback"):
        StorageSettings()


def test_by_default_the_gate_regenerates_twice_with_no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIKENESS_FALLBACK", "LIKENESS_STORAGE_FALLBACK", "LIKENESS_STORAGE_GATE_MAX_REGENERATIONS"):
        monkeypatch.delenv(name, raising=False)
    assert StorageSettings().gate() == Gate(2, frozenset({"different", "no_face"}), {})


# -- storage: the gate in the shot's life ------------------------------------------------------------------


class Shot:
    """One shot of a `sim` character driven through storage's handlers, take by take."""

    def __init__(self, records: FakeRecords, gate: Gate = POLICY) -> None:
        self.records, self.gate = records, gate
        self.character: CharacterRequested = character_requested()
        self.request = ShotRequested(
            correlation_id=self.character.character_id,
            tenant_id=self.character.tenant_id,
            shot_id=uuid.uuid4(),
            character_id=self.character.character_id,
            params=ShotParams(prompt="close-up", seed=5),
        )

    async def start(self) -> None:
        await handlers.on_character_requested(self.character, records=self.records)
        assert await handlers.on_shot_requested(self.request, records=self.records) == []

    async def take(self, cause: Event, take: int, provider: str, verdict: Verdict) -> tuple[ShotScored, list[Event]]:
        """The take is generated by `provider`, stored and scored `verdict`; what storage says to the score."""
        made = ShotGenerated.follow(
            cause,
            shot_id=self.request.shot_id,
            character_id=self.request.character_id,
            provider=provider,
            image=image_ref(seed=take),
            latency_ms=10,
            cost_usd=0.04,
            attempts=1,
            take=take,
        )
        [stored, *_] = await handlers.on_shot_generated(made, records=self.records)
        assert isinstance(stored, ShotStored)
        assert stored.take == take
        score = scored(stored, verdict).model_copy(update={"take": take})
        return score, await handlers.on_shot_scored(score, records=self.records, gate=self.gate)


async def test_a_drifted_shot_is_regenerated_twice_then_rescued_by_the_fallback_and_completes_once() -> None:
    records = FakeRecords()
    shot = Shot(records)
    await shot.start()

    score, emitted = await shot.take(shot.request, 1, "sim", "different")
    [retake] = emitted
    assert isinstance(retake, RetakeShot)
    assert (retake.take, retake.reason, retake.provider, retake.previous_verdict) == (
        2,
        "regenerate",
        "sim",
        "different",
    )
    assert retake.params.seed == take_seed(shot.request.shot_id, 2) != shot.request.params.seed
    assert retake.params.prompt == "close-up"
    assert retake.references == records.refs[shot.character.character_id]
    assert (await records.shot_state(shot.request.shot_id)) is not None
    assert records.shots[shot.request.shot_id]["status"] == "requested"  # open again: nothing completes
    # a redelivered score is recognised (the processed-event table drops it; the handler again changes nothing)
    assert await handlers.on_shot_scored(score, records=records, gate=POLICY) == []

    _, [second] = await shot.take(retake, 2, "sim", "no_face")
    assert isinstance(second, RetakeShot)
    assert (second.take, second.reason) == (3, "regenerate")
    _, [fallback] = await shot.take(second, 3, "sim", "different")
    assert isinstance(fallback, RetakeShot)
    assert (fallback.take, fallback.reason, fallback.provider, fallback.fallback_from) == (
        4,
        "fallback",
        "fal-instant-character",
        "sim",
    )
    _, [completed] = await shot.take(fallback, 4, "fal-instant-character", "same")
    assert isinstance(completed, CharacterCompleted)
    assert (completed.shots_total, completed.shots_scored, completed.verdicts) == (1, 1, {"same": 1})

    takes = {take: records.takes[(shot.request.shot_id, take)] for take in (1, 2, 3, 4)}
    assert [t["reason"] for t in takes.values()] == ["first", "regenerate", "regenerate", "fallback"]
    assert [t["verdict"] for t in takes.values()] == ["different", "no_face", "different", "same"]
    assert [t["provider"] for t in takes.values()] == ["sim", "sim", "sim", "fal-instant-character"]
    assert [s.take for s in records.scores] == [1, 2, 3, 4]  # every take's score is kept
    assert len(records.costs) == 4  # and every take's cost counts


async def test_the_retake_event_id_is_derived_from_the_score_so_a_rerun_asks_for_the_same_take() -> None:
    first, second = FakeRecords(), FakeRecords()
    shot = Shot(first)
    await shot.start()
    twin = Shot(second)
    twin.character, twin.request = shot.character, shot.request
    await twin.start()
    _, [a] = await shot.take(shot.request, 1, "sim", "different")
    _, [b] = await twin.take(shot.request, 1, "sim", "different")
    assert isinstance(a, RetakeShot)
    assert isinstance(b, RetakeShot)
    # same id, same take, same seed: work redone after a crash emits the very same command
    assert (a.event_id, a.take, a.params) == (b.event_id, b.take, b.params)


async def test_a_rescoring_of_a_gated_take_asks_for_no_new_take() -> None:
    records = FakeRecords()
    shot = Shot(records)
    await shot.start()
    score, _ = await shot.take(shot.request, 1, "sim", "same")
    rescored = score.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "score": score.score.model_copy(update={"verdict": "different", "scorer_key": "scoring-3-bbbbbbbbbbbb"}),
        }
    )
    assert await handlers.on_shot_scored(rescored, records=records, gate=POLICY) == []
    assert records.shots[shot.request.shot_id]["status"] == "scored"


async def test_with_the_gate_off_a_different_shot_is_final() -> None:
    records = FakeRecords()
    shot = Shot(records, Gate(max_regenerations=0))
    await shot.start()
    _, [completed] = await shot.take(shot.request, 1, "sim", "different")
    assert isinstance(completed, CharacterCompleted)
    assert completed.verdicts == {"different": 1}


async def test_a_failed_retake_ends_the_shot_and_completes_the_character() -> None:
    records = FakeRecords()
    shot = Shot(records)
    await shot.start()
    _, [retake] = await shot.take(shot.request, 1, "sim", "different")
    assert isinstance(retake, RetakeShot)
    failed = adapter.shot_failed(retake, retake, "generation", "the provider refused")
    assert failed.take == 2
    [completed] = await handlers.on_shot_failed(failed, records=records)
    assert isinstance(completed, CharacterCompleted)
    assert completed.shots_failed == 1
    assert records.takes[(shot.request.shot_id, 1)]["verdict"] == "different"  # the first take is still there
    assert records.takes[(shot.request.shot_id, 2)]["status"] == "failed"


# -- provider adapter: which identity a retake uses ---------------------------------------------------------


def retake(reason: TakeReason = "regenerate", provider: str = "sim") -> RetakeShot:
    character_id = uuid.uuid4()
    return RetakeShot(
        correlation_id=character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character_id,
        take=2,
        reason=reason,
        provider=provider,
        previous_verdict="different",
        params=ShotParams(prompt="close-up", seed=take_seed(SHOT, 2)),
        references=[image_ref()],
    )


def identity(status: str, provider: str = "sim") -> IdentityRecord:
    return IdentityRecord(uuid.uuid4(), "studio", provider, status, "job", "sim:ref", [image_ref()], None)  # type: ignore[arg-type]


def test_a_regeneration_uses_the_characters_identity_with_the_new_seed_as_take_two() -> None:
    command = retake()
    generate = adapter.retake_with_own_identity(command, identity("ready"))
    assert generate.type == "GenerateShot"
    assert (generate.take, generate.provider, generate.identity_ref, generate.params.seed) == (  # type: ignore[attr-defined]
        2,
        "sim",
        "sim:ref",
        command.params.seed,
    )
    assert generate.event_id == adapter.retake_with_own_identity(command, identity("ready")).event_id  # derived


def test_a_regeneration_without_a_ready_identity_fails_the_take() -> None:
    failed = adapter.retake_with_own_identity(retake(), identity("failed"))
    assert isinstance(failed, ShotFailed)
    assert failed.take == 2


def test_only_configured_instant_reference_providers_can_be_fallbacks() -> None:
    assert adapter.fallback_refusal("sim", SimProvider()) is None
    assert "not configured" in (adapter.fallback_refusal("fal-instant-character", None) or "")
    trained = SimProvider()
    trained.name = "fal-flux-lora"
    assert "only instant-reference" in (adapter.fallback_refusal("fal-flux-lora", trained) or "")


# -- reports: every take is a shot of its provider --------------------------------------------------------


def take_fact(take: int, provider: str, reason: str, verdict: str, *, final: bool = False) -> ShotFact:
    return ShotFact(
        character_id="c",
        provider=provider,
        strategy="instant_reference",
        scenario="close-up",
        status="scored",
        verdict=verdict,
        face_distance=0.3 if verdict == "same" else 0.9,
        clip_image=None,
        clip_text=None,
        clip_calibrated=True,
        latency_ms=100.0,
        cost_usd=0.04,
        simulated=True,
        shot_id="s1",
        take=take,
        take_reason=reason,
        final=final,
    )


def test_reports_count_each_take_as_a_shot_of_its_provider_and_say_what_the_gate_did() -> None:
    takes = [
        take_fact(1, "sim", "first", "different"),
        take_fact(2, "sim", "regenerate", "different"),
        take_fact(3, "sim", "regenerate", "no_face"),
        take_fact(4, "fal-instant-character", "fallback", "same", final=True),
        ShotFact(
            "c", "sim", "instant_reference", "close-up", "scored", "same", 0.3, None, None, True, 90.0, 0.04, True
        ),
    ]
    rows = {row.provider: row for row in summarize(takes, [])}
    sim, fal = rows["sim"], rows["fal-instant-character"]
    assert (sim.shots_requested, sim.passed, sim.takes_regenerated, sim.takes_fallback) == (4, 1, 2, 0)
    assert sim.shot_cost_total_usd == pytest.approx(4 * 0.04)  # every take was paid for
    assert (fal.shots_requested, fal.passed, fal.takes_fallback, fal.rescued_by_fallback) == (1, 1, 1, 1)
    assert gate_summary(takes) == GateSummary(
        shots=2,
        takes=5,
        shots_regenerated=1,
        takes_regenerated=2,
        takes_fallback=1,
        rescued_by_fallback=1,
        rescued_by_regeneration=0,
    )
    with pytest.raises(ValueError, match="take_reason"):
        take_fact(2, "sim", "again", "same")
