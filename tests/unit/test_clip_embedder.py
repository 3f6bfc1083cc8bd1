"""OpenClipImageEmbedder on random ViT-B-32 weights (no weights can be downloaded here)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import safetensors.torch
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.ports import ModelWeightsUnavailable
from tests.sample_images import astronaut, grace_hopper, plain_gray


@pytest.fixture(scope="module")
def embedder() -> OpenClipImageEmbedder:
    return OpenClipImageEmbedder("ViT-B-32", weights=None)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [astronaut(), grace_hopper(), plain_gray(64)]


def test_random_weights_say_they_are_uncalibrated(embedder: OpenClipImageEmbedder) -> None:
    assert embedder.calibrated is False
    assert embedder.model_name == "open_clip ViT-B-32 (random weights, uncalibrated)"


def test_embeddings_are_unit_float32_rows_in_order(embedder: OpenClipImageEmbedder, photos: list[Image.Image]) -> None:
    vectors = embedder.embed(photos)

    assert vectors.shape == (3, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = embedder.embed([photos[1]])
    np.testing.assert_allclose(alone[0], vectors[1], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


def test_any_mode_is_accepted(embedder: OpenClipImageEmbedder) -> None:
    photo = astronaut()
    rgb, gray, rgba = embedder.embed([photo, photo.convert("L"), photo.convert("RGBA")])
    np.testing.assert_allclose(rgba, rgb, atol=1e-5)
    assert gray.shape == rgb.shape


def test_no_images_give_an_empty_matrix(embedder: OpenClipImageEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 512)


@pytest.fixture(scope="module")
def twin() -> OpenClipImageEmbedder:
    """A second seed-0 embedder, with smaller batches."""
    return OpenClipImageEmbedder("ViT-B-32", weights=None, batch_size=2)


def test_random_weights_are_seeded_and_batches_split_cleanly(
    embedder: OpenClipImageEmbedder, twin: OpenClipImageEmbedder, photos: list[Image.Image]
) -> None:
    np.testing.assert_allclose(twin.embed(photos), embedder.embed(photos), atol=1e-5)


# --- the text tower: CLIP-T, prompt adherence -----------------------------------------------------

PROMPTS = ["a portrait of an astronaut", "Grace Hopper in uniform", "", "a very long prompt " * 40]


def test_text_embeddings_are_unit_float32_rows_in_the_image_space(embedder: OpenClipImageEmbedder) -> None:
    vectors = embedder.embed_texts(PROMPTS)

    assert embedder.prompt_adherence is True
    assert vectors.shape == (len(PROMPTS), 512)  # the image embeddings' dimension: cosines compare them
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    np.testing.assert_allclose(embedder.embed_texts([PROMPTS[1]])[0], vectors[1], atol=1e-5)
    assert embedder.embed_texts([]).shape == (0, 512)


def test_text_embeddings_are_seeded_and_batches_split_cleanly(
    embedder: OpenClipImageEmbedder, twin: OpenClipImageEmbedder
) -> None:
    np.testing.assert_allclose(twin.embed_texts(PROMPTS), embedder.embed_texts(PROMPTS), atol=1e-5)


def test_each_distinct_prompt_is_encoded_once(twin: OpenClipImageEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    model = twin._model
    original = model.encode_text

    def counting(tokens: Any) -> Any:
        encoded.append(len(tokens))
        return original(tokens)

    monkeypatch.setattr(model, "encode_text", counting)
    first = twin.embed_texts(["a red hat, cached", "a blue coat, cached", "a red hat, cached"])
    again = twin.embed_texts(["a blue coat, cached", "a green scarf, cached"])
    assert encoded == [2, 1]  # the repeat and the second call's known prompt were not encoded again
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[1], again[0])


def test_without_prompt_adherence_the_text_tower_is_gone(
    embedder: OpenClipImageEmbedder, photos: list[Image.Image]
) -> None:
    images_only = OpenClipImageEmbedder("ViT-B-32", weights=None, prompt_adherence=False)

    assert images_only.prompt_adherence is False
    with pytest.raises(RuntimeError, match="prompt_adherence=False"):
        images_only.embed_texts(["a portrait"])
    np.testing.assert_allclose(images_only.embed(photos), embedder.embed(photos), atol=1e-5)
    assert images_only.model_name == embedder.model_name  # the image embeddings are the same


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file holding the seed-0 random embedder's float32 weights, text tower included."""
    weights = tmp_path_factory.mktemp("weights") / "my-vit-b-32.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initialisation as the seed-0 random embedder
        full_model = open_clip.create_model("ViT-B-32", pretrained=None)
    state = {name: tensor.contiguous() for name, tensor in full_model.state_dict().items()}
    safetensors.torch.save_file(state, str(weights))
    return weights


def test_a_weights_file_is_loaded_and_calibrated(
    embedder: OpenClipImageEmbedder, photos: list[Image.Image], weights_file: Path
) -> None:
    loaded = OpenClipImageEmbedder("ViT-B-32", weights=str(weights_file))

    assert loaded.calibrated is True
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:12]
    # the file's digest, so new weights under an old file name still make a new scorer key
    assert loaded.model_name == f"open_clip ViT-B-32 (my-vit-b-32.safetensors sha256:{digest})"
    np.testing.assert_allclose(loaded.embed(photos), embedder.embed(photos), atol=1e-5)
    np.testing.assert_allclose(loaded.embed_texts(PROMPTS), embedder.embed_texts(PROMPTS), atol=1e-5)


def test_a_missing_weights_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsUnavailable, match=r"not an existing file.*pass its path"):
        OpenClipImageEmbedder("ViT-B-32", weights=str(tmp_path / "nope.safetensors"))


def test_an_unreadable_weights_file_says_what_to_do(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"junk")
    with pytest.raises(ModelWeightsUnavailable, match="pass its file path"):
        OpenClipImageEmbedder("ViT-B-32", weights=str(junk))


def test_an_uncached_hub_tag_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    offline_before = hub_constants.HF_HUB_OFFLINE
    started = time.perf_counter()

    with pytest.raises(ModelWeightsUnavailable, match=r"laion2b_s34b_b79k.*pass its file path"):
        OpenClipImageEmbedder("ViT-B-32", weights="laion2b_s34b_b79k", offline=True)

    assert time.perf_counter() - started < 10.0  # online retries take ~46 s here
    assert offline_before is hub_constants.HF_HUB_OFFLINE


def test_bfloat16_gives_the_same_embeddings_and_says_so(
    embedder: OpenClipImageEmbedder, photos: list[Image.Image], weights_file: Path
) -> None:
    half = OpenClipImageEmbedder("ViT-B-32", weights=str(weights_file), precision="bfloat16")

    full, reduced = embedder.embed(photos), half.embed(photos)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    assert (full * reduced).sum(axis=1).min() > 0.999
    full_texts, reduced_texts = embedder.embed_texts(PROMPTS), half.embed_texts(PROMPTS)
    assert reduced_texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced_texts, axis=1), 1.0, atol=1e-5)
    assert (full_texts * reduced_texts).sum(axis=1).min() > 0.999  # measured 0.9998
    assert half.model_name.endswith("bfloat16)")
    assert half.model_name != embedder.model_name  # cached reference embeddings are not mixed up


def test_random_bfloat16_weights_are_made_in_bfloat16_and_leave_torch_as_it_was(photos: list[Image.Image]) -> None:
    half = OpenClipImageEmbedder("ViT-B-32", precision="bfloat16")

    assert torch.get_default_dtype() == torch.float32
    assert half.model_name == "open_clip ViT-B-32 (random weights, uncalibrated, bfloat16)"
    vectors = half.embed(photos)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(half.embed_texts(PROMPTS), axis=1), 1.0, atol=1e-5)
