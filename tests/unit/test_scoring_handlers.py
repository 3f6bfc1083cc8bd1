"""Scoring's handler with fake models: one ShotScored per shot and scorer key, references cached."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

import pytest
from PIL import Image

from contracts import ImageRef, ShotScore, ShotScored, ShotStored
from services.scoring import handlers
from services.scoring.scorer import ReferenceEmbeddings, Scorer, ScoringThresholds, ShotToScore
from tests.fakes import FakeFaceEmbedder, FakeImageEmbedder, FakeTextEmbedder, image_ref, swatch

REFERENCE_SEED, SHOT_SEED = 1, 2


@dataclass
class FakeAsyncScorer:
    """handlers.AsyncScorer over a real Scorer with fake models, run inline."""

    scorer: Scorer
    embedded: int = 0

    @property
    def version(self) -> str:
        return self.scorer.embedding_version

    @property
    def key(self) -> str:
        return self.scorer.key

    async def embed_references(self, images: list[Image.Image]) -> ReferenceEmbeddings:
        self.embedded += 1
        return self.scorer.embed_references(images)

    def references_from_bytes(self, data: bytes) -> ReferenceEmbeddings:
        return ReferenceEmbeddings.from_bytes(data)

    async def score_batch(self, shots: Sequence[ShotToScore]) -> list[ShotScore]:
        return self.scorer.score_batch(shots)


@dataclass
class FakeImages:
    """handlers.ImageSource: a swatch per ImageRef, by the ref's key."""

    images: dict[str, Image.Image] = field(default_factory=dict)

    def add(self, seed: int) -> ImageRef:
        ref = image_ref(seed=seed)
        self.images[ref.key] = swatch(seed)
        return ref

    async def load(self, ref: ImageRef) -> Image.Image:
        return self.images[ref.key]


@dataclass
class FakeCache:
    """handlers.EmbeddingCache in memory."""

    rows: dict[tuple[UUID, str, str], bytes] = field(default_factory=dict)

    async def get(self, character_id: UUID, version: str, references_sha: str) -> bytes | None:
        return self.rows.get((character_id, version, references_sha))

    async def put(self, character_id: UUID, version: str, references_sha: str, data: bytes) -> None:
        self.rows[(character_id, version, references_sha)] = data


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


def scoring(thresholds: ScoringThresholds | None = None) -> tuple[FakeAsyncScorer, FakeFaceEmbedder, FakeTextEmbedder]:
    face, texts = FakeFaceEmbedder(), FakeTextEmbedder()
    face.register(swatch(REFERENCE_SEED), [0.0, 0.0])
    face.register(swatch(SHOT_SEED), [0.1, 0.0])
    return FakeAsyncScorer(Scorer(face, FakeImageEmbedder(), thresholds, texts=texts)), face, texts


def stored(images: FakeImages, character_id: UUID | None = None, prompt: str = "a red coat") -> ShotStored:
    character_id = character_id or uuid.uuid4()
    return ShotStored(
        correlation_id=character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character_id,
        prompt=prompt,
        image=images.add(SHOT_SEED),
        references=[images.add(REFERENCE_SEED)],
    )


def scored_fields(scored: ShotScored) -> dict[str, object]:
    return {"shot_id": scored.shot_id, "character_id": scored.character_id, "score": scored.score}


async def test_the_shot_is_scored_with_its_prompt_and_its_event_id_follows_from_the_key(images: FakeImages) -> None:
    scorer, _, texts = scoring()
    event = stored(images)
    asked: list[ShotToScore] = []

    async def score(shot: ShotToScore) -> ShotScore:
        asked.append(shot)
        [result] = await scorer.score_batch([shot])
        return result

    scored = await handlers.score_shot(event, scorer=scorer, score=score, images=images, cache=FakeCache())

    assert isinstance(scored, ShotScored)
    assert [shot.prompt for shot in asked] == ["a red coat"]
    assert texts.batches == [["a red coat"]]
    assert (scored.shot_id, scored.character_id, scored.causation_id) == (
        event.shot_id,
        event.character_id,
        event.event_id,
    )
    assert scored.score.verdict == "same"
    assert scored.score.scorer_key == scorer.key
    assert scored.event_id == ShotScored.follow(event, key=scorer.key, **scored_fields(scored)).event_id


async def test_scoring_again_with_the_same_key_makes_the_same_event_and_a_new_key_a_new_one(
    images: FakeImages,
) -> None:
    scorer, _, _ = scoring()
    rescorer, _, _ = scoring(ScoringThresholds(face_same_below=0.5, face_uncertain_below=0.5))
    event, cache = stored(images), FakeCache()

    async def score_with(chosen: FakeAsyncScorer) -> ShotScored:
        async def score(shot: ShotToScore) -> ShotScore:
            return (await chosen.score_batch([shot]))[0]

        return await handlers.score_shot(event, scorer=chosen, score=score, images=images, cache=cache)

    first, again, rescored = await score_with(scorer), await score_with(scorer), await score_with(rescorer)

    assert scorer.key != rescorer.key
    assert first.event_id == again.event_id
    assert rescored.event_id != first.event_id
    assert rescored.score.scorer_key == rescorer.key


async def test_reference_embeddings_are_computed_once_per_character_and_model_version(images: FakeImages) -> None:
    scorer, _, _ = scoring()
    cache = FakeCache()
    character_id = uuid.uuid4()

    async def score(shot: ShotToScore) -> ShotScore:
        return (await scorer.score_batch([shot]))[0]

    for _ in range(3):
        event = stored(images, character_id)
        await handlers.score_shot(event, scorer=scorer, score=score, images=images, cache=cache)

    assert scorer.embedded == 1
    [(cached_character, version, _)] = cache.rows
    assert (cached_character, version) == (character_id, scorer.version)
