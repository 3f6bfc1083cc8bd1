"""The sample character through all four services: stored and scored exactly once, drift caught."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from minio import Minio
from PIL import Image

from infra.sample import SAMPLE_NAME, demo_shots, sample_reference_png
from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e


def submit_sample(system: RunningSystem, provider: str = "sim") -> str:
    reference = ("astronaut.png", sample_reference_png(), "image/png")
    character_id = system.client.create_character(SAMPLE_NAME, [reference], provider=provider)
    system.client.wait_for_character(character_id)
    for params in demo_shots():
        system.client.request_shot(character_id, params.model_dump(mode="json"))
    return character_id


def wait_completed(system: RunningSystem, character_id: str, timeout_s: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        character = system.client.character(character_id)
        if character["status"] == "completed" and len(character["shots"]) == len(demo_shots()):
            return character
        time.sleep(0.3)
    raise AssertionError(f"character not completed in {timeout_s} s: {system.client.character(character_id)}")


async def _score_rows_per_shot(system: RunningSystem, character_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(system.endpoints.database_url)
    try:
        rows = await conn.fetch(
            """SELECT s.shot_id,
                      (SELECT count(*) FROM records.scores sc WHERE sc.shot_id = s.shot_id) AS scores,
                      (SELECT count(*) FROM records.event_log e
                        WHERE e.type = 'ShotScored' AND e.payload->>'shot_id' = s.shot_id::text) AS scored_events
               FROM records.shots s WHERE s.character_id=$1""",
            uuid.UUID(character_id),
        )
    finally:
        await conn.close()
    # a shot scored twice would show as a second score row or a second ShotScored event
    return {str(row["shot_id"]): max(row["scores"], row["scored_events"]) for row in rows}


def score_rows_per_shot(system: RunningSystem, character_id: str) -> dict[str, int]:
    """How many score rows each of the character's shots has, read straight from PostgreSQL."""
    return asyncio.run(_score_rows_per_shot(system, character_id))


def stored_object_count(system: RunningSystem, prefix: str) -> int:
    e = system.endpoints
    client = Minio(e.s3_endpoint, access_key=e.s3_access_key, secret_key=e.s3_secret_key, secure=e.s3_secure)
    return sum(1 for _ in client.list_objects(e.s3_bucket, prefix=prefix, recursive=True))


def test_sample_character_every_shot_stored_and_scored_exactly_once(system: RunningSystem) -> None:
    character_id = submit_sample(system)
    character = wait_completed(system, character_id)
    shots = character["shots"]
    assert len(shots) == 15
    assert all(shot["status"] == "scored" for shot in shots), [s["status"] for s in shots]
    assert set(score_rows_per_shot(system, character_id).values()) == {1}
    for shot in shots:
        assert shot["simulation"]["simulated"] is True
        image = system.client.image(shot["image"]["sha256"])
        assert Image.open(io.BytesIO(image)).size == (shot["image"]["width"], shot["image"]["height"])
    drifted = [s for s in shots if s["simulation"]["drifted"]]
    clean = [s for s in shots if not s["simulation"]["drifted"]]
    assert drifted, "the demo configuration should drift at least one shot"
    assert [s["score"]["verdict"] for s in clean] == ["same"] * len(clean)
    assert [s["score"]["verdict"] for s in drifted] == ["different"] * len(drifted)
    for shot in shots:
        score = shot["score"]
        assert score["basis"] == "face"
        assert score["scorer_version"] == "scoring-2"
        assert score["reason"].startswith("face distance")
        assert score["reason"].endswith(score["verdict"])
        assert score["face"]["centroid_distance"] is not None
        assert score["face"]["references_with_face"] == 1
        assert -1.0 <= score["clip"]["text_similarity"] <= 1.0  # prompt adherence, on random weights
        assert score["clip"]["calibrated"] is False

    seen: list[str] = []
    for event_type, _ in system.client.events(character_id, timeout_s=30):
        seen.append(event_type)
        if event_type == "CharacterCompleted":
            break
    assert seen[:2] == ["CharacterRequested", "ReferencesStored"]
    assert seen.count("ShotScored") == 15
    assert seen.count("ShotStored") == 15


def test_killing_scoring_mid_run_loses_no_shot_and_scores_none_twice(system: RunningSystem) -> None:
    character_id = submit_sample(system)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scored = [s for s in system.client.character(character_id)["shots"] if s["status"] == "scored"]
        if len(scored) >= 2:
            break
        time.sleep(0.1)
    system.services.kill("scoring")
    time.sleep(1.0)
    system.services.start("scoring")
    system.services.wait_ready(["scoring"])
    character = wait_completed(system, character_id)
    assert all(shot["status"] == "scored" for shot in character["shots"])
    assert set(score_rows_per_shot(system, character_id).values()) == {1}


def bad_uploads() -> list[tuple[str, bytes, str, int]]:
    jpeg = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 120, 90)).save(jpeg, format="JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    huge_png = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge_png, format="PNG")
    return [
        ("notes.jpg", b"these are my notes, not a photo\n" * 20, "image/jpeg", 415),
        ("empty.png", b"", "image/png", 422),
        ("cut.jpg", truncated, "image/jpeg", 422),
        ("big.jpg", b"\xff\xd8\xff" + b"\0" * (50 * 1024 * 1024), "image/jpeg", 413),
        ("wide.png", huge_png.getvalue(), "image/png", 422),
    ]


@pytest.mark.parametrize("upload", bad_uploads(), ids=lambda u: u[0])
def test_bad_references_get_a_clear_4xx_and_nothing_is_stored(
    system: RunningSystem, upload: tuple[str, bytes, str, int]
) -> None:
    filename, data, content_type, expected = upload
    before = stored_object_count(system, "studio-a/")
    good = ("good.png", sample_reference_png(), "image/png")
    response = system.client.http.post(
        "/v1/characters",
        data={"name": "Bad upload", "provider": "sim"},
        files=[("references", good), ("references", (filename, data, content_type))],
    )
    assert response.status_code == expected, response.text
    assert filename in response.text
    assert stored_object_count(system, "studio-a/") == before


def test_every_call_needs_a_key_and_tenants_are_isolated(system: RunningSystem) -> None:
    character_id = system.client.create_character("Private", [("a.png", sample_reference_png(), "image/png")])
    system.client.wait_for_character(character_id)
    anonymous = httpx.get(f"{system.base_url}/v1/characters/{character_id}")
    assert anonymous.status_code == 401
    wrong = httpx.get(f"{system.base_url}/v1/characters/{character_id}", headers={"X-API-Key": "not-a-real-key"})
    assert wrong.status_code == 401
    assert system.other_tenant.http.get(f"/v1/characters/{character_id}").status_code == 404
    shot = system.other_tenant.http.post(f"/v1/characters/{character_id}/shots", json={"prompt": "x"})
    assert shot.status_code == 404
    sha = system.client.character(character_id)["references"][0]["sha256"]
    assert system.other_tenant.http.get(f"/v1/images/{sha}").status_code == 404
    assert system.client.http.get(f"/v1/images/{sha}").status_code == 200


def test_openapi_document_describes_the_api(system: RunningSystem) -> None:
    spec = httpx.get(f"{system.base_url}/openapi.json").json()
    assert {"/v1/characters", "/v1/characters/{character_id}", "/v1/characters/{character_id}/shots"} <= set(
        spec["paths"]
    )
    assert httpx.get(f"{system.base_url}/docs").status_code == 200
