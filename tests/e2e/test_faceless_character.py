"""A character without a human face (a cat): judged by CLIP image similarity alone, and says so."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image
from skimage import data

from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e


def chelsea_png() -> bytes:
    """scikit-image's cat (public domain): dlib finds no human face in it."""
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_faceless_character_is_scored_by_clip_alone(system: RunningSystem) -> None:
    client = system.client
    character_id = client.create_character("Chelsea the cat", [("chelsea.png", chelsea_png(), "image/png")])
    client.wait_for_character(character_id)
    for seed in (1, 2):
        client.request_shot(character_id, {"prompt": "the cat, close-up portrait", "seed": seed})
    deadline = time.monotonic() + 120
    character = client.character(character_id)
    while character["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.3)
        character = client.character(character_id)
    assert character["status"] == "completed", character
    for shot in character["shots"]:
        score = shot["score"]
        assert score["basis"] == "clip_image"
        assert score["face"] is None
        # CLIP runs on random weights here, so identity cannot be judged: uncertain, and the reason says why
        assert score["verdict"] == "uncertain"
        assert "no face in the references" in score["reason"]
        assert "random weights" in score["reason"]
        assert -1.0 <= score["clip"]["image_similarity"] <= 1.0
