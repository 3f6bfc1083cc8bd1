"""CLIP on onnxruntime: the same embeddings as open_clip, an export cache that is safe, a worker without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from services.scoring.adapters import clip_onnx
from services.scoring.adapters.clip import OpenClipImageEmbedder
from services.scoring.adapters.clip_onnx import ExportedClip, OnnxClipEmbedder, export_key, exported_clip
from services.scoring.adapters.clip_tokens import ClipTokenizer
from services.scoring.adapters.models import build_clip_embedder
from services.scoring.ports import ModelWeightsUnavailable, ScoringModelError
from services.scoring.settings import ScoringSettings
from tests.sample_images import astronaut, grace_hopper, plain_gray

PROMPTS = [
    "a portrait photo of Sarah, studio light",
    "Café &amp; crème brûlée, “quoted” — dashes",
    "  spaced    out\tprompt\n",
    "",
    "x",
    "naïve 東京 🚀 emoji, it's I'll we've 3.14159 #hashtag",
    "a very long prompt " * 40,  # over 77 tokens: cut, ending with the end token
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedClip:
    """A real export of random ViT-B-32 (seed 0), made by the child process, into an empty cache."""
    return exported_clip("ViT-B-32", None, cache=tmp_path_factory.mktemp("clip-onnx"))


@pytest.fixture(scope="module")
def onnx(exported: ExportedClip) -> OnnxClipEmbedder:
    return OnnxClipEmbedder(exported, batch_size=2)


@pytest.fixture(scope="module")
def reference() -> OpenClipImageEmbedder:
    return OpenClipImageEmbedder("ViT-B-32", weights=None, precision="float32")


def shapes() -> list[Image.Image]:
    """Photos and sizes that exercise every branch of the preprocessing: wide, tall, tiny, exact, grey, RGBA."""
    photo = astronaut()
    return [
        photo,
        grace_hopper(),
        plain_gray(64),
        photo.resize((640, 200)),
        photo.resize((150, 531)),
        photo.resize((224, 300)),
        photo.resize((224, 224)),
        photo.resize((7, 300)),
        photo.convert("L"),
        photo.convert("RGBA"),
    ]


def test_the_tokenizer_gives_open_clips_ids() -> None:
    ours = ClipTokenizer()(PROMPTS)
    theirs = open_clip.get_tokenizer("ViT-B-32")(PROMPTS).numpy()

    assert ours.dtype == np.int64
    assert ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, theirs)


def test_image_embeddings_match_open_clip_in_float32(onnx: OnnxClipEmbedder, reference: OpenClipImageEmbedder) -> None:
    images = shapes()

    ours = onnx.embed(images)

    assert ours.shape == (len(images), 512)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, reference.embed(images), atol=1e-4)


def test_preprocessing_is_open_clips_pixel_for_pixel(onnx: OnnxClipEmbedder) -> None:
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    for image in shapes():
        np.testing.assert_allclose(onnx.pixels(image), preprocess(image.convert("RGB")).numpy(), atol=1e-5)


def test_text_embeddings_match_open_clip_and_are_cached(
    onnx: OnnxClipEmbedder, reference: OpenClipImageEmbedder
) -> None:
    ours = onnx.embed_texts(PROMPTS)
    np.testing.assert_allclose(ours, reference.embed_texts(PROMPTS), atol=1e-4)
    np.testing.assert_array_equal(onnx.embed_texts([PROMPTS[1], PROMPTS[0]]), ours[[1, 0]])
    assert onnx.embed_texts([]).shape == (0, 512)


def test_the_model_name_says_runtime_and_random_weights(onnx: OnnxClipEmbedder) -> None:
    assert onnx.model_name == "open_clip ViT-B-32 (random weights, uncalibrated, onnx float32)"
    assert onnx.calibrated is False
    assert onnx.dimension == 512
    assert onnx.embed([]).shape == (0, 512)


def test_the_export_records_how_close_it_came_to_torch(exported: ExportedClip) -> None:
    meta = json.loads((exported.directory / "meta.json").read_text())
    assert set(meta["largest_difference_from_torch"]) == {"image.onnx", "text.onnx"}
    assert max(meta["largest_difference_from_torch"].values()) < 1e-3
    assert exported.directory.name.startswith("ViT-B-32-")
    assert not list(exported.directory.parent.glob(".*.partial"))  # the temporary directory was renamed


def test_without_prompt_adherence_the_text_graph_is_not_loaded(exported: ExportedClip) -> None:
    images_only = OnnxClipEmbedder(exported, prompt_adherence=False)
    assert images_only.prompt_adherence is False
    with pytest.raises(RuntimeError, match="prompt_adherence=False"):
        images_only.embed_texts(["a portrait"])


def test_a_finished_export_is_reused_without_a_child(exported: ExportedClip, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the cache holds a finished export")

    monkeypatch.setattr(clip_onnx, "_export_in_child", no_export)
    assert exported_clip("ViT-B-32", None, cache=exported.directory.parent) == exported


def test_an_unfinished_export_is_redone_and_a_failed_one_leaves_nothing(
    exported: ExportedClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"ViT-B-32-float32-{export_key('ViT-B-32', None)}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "image.onnx").write_bytes(b"half a graph")  # a crash before meta.json: not finished
    (tmp_path / f".{name}.999999.partial").mkdir()  # left by a worker killed mid-export
    calls: list[Path] = []

    def failing(architecture: str, weights: str | None, *, directory: Path, **options: object) -> None:
        calls.append(directory)
        directory.mkdir()
        (directory / "image.onnx").write_bytes(b"partial")
        raise ScoringModelError("the export child died")

    monkeypatch.setattr(clip_onnx, "_export_in_child", failing)
    with pytest.raises(ScoringModelError, match="died"):
        exported_clip("ViT-B-32", None, cache=tmp_path)
    assert len(calls) == 1
    assert not list(tmp_path.glob(".*.partial"))

    def copying(architecture: str, weights: str | None, *, directory: Path, **options: object) -> None:
        directory.mkdir()
        for file in exported.directory.iterdir():
            (directory / file.name).symlink_to(file)

    (tmp_path / name / "image.onnx").unlink()
    (tmp_path / name).rmdir()
    monkeypatch.setattr(clip_onnx, "_export_in_child", copying)
    again = exported_clip("ViT-B-32", None, cache=tmp_path)
    assert again.directory == tmp_path / name
    assert again.weights_label == exported.weights_label
    assert sorted(path.name for path in tmp_path.iterdir()) == [name, f"{name}.lock"]


def test_prepare_models_exports_for_the_settings_once(exported: ExportedClip, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    monkeypatch.setenv("LIKENESS_SCORING_CLIP_CACHE", str(exported.directory.parent))
    result = CliRunner().invoke(app, ["prepare-models"])
    assert result.exit_code == 0, result.output
    assert "already exported" in result.output
    assert exported.directory.name in result.output.replace("\n", "")


def test_the_export_key_follows_the_weights_file_contents(tmp_path: Path) -> None:
    first, second, same = (tmp_path / f"{name}.safetensors" for name in ("first", "second", "same"))
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")
    same.write_bytes(b"weights one")

    assert export_key("ViT-B-32", str(first)) != export_key("ViT-B-32", str(second))
    assert export_key("ViT-B-32", str(first)) == export_key("ViT-B-32", str(same))
    assert export_key("ViT-B-32", None, seed=0) != export_key("ViT-B-32", None, seed=1)
    assert export_key("ViT-B-32", None) != export_key("ViT-B-16", None)
    with pytest.raises(ModelWeightsUnavailable, match="not an existing file"):
        export_key("ViT-B-32", str(tmp_path / "missing.safetensors"))


def test_a_weights_error_in_the_export_child_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsUnavailable, match="laion2b_s34b_b79k"):
        exported_clip("ViT-B-32", "laion2b_s34b_b79k", cache=tmp_path, offline=True)
    assert [path.suffix for path in tmp_path.iterdir()] == [".lock"]


def test_the_scoring_worker_never_imports_torch(exported: ExportedClip) -> None:
    """The memory budget depends on it: the service's scorer, loaded as the service loads it."""
    program = textwrap.dedent(
        f"""
        import sys
        from services.scoring.adapters.models import build_scorer
        from services.scoring.settings import ScoringSettings
        from tests.sample_images import astronaut
        scorer = build_scorer(ScoringSettings(clip_cache={str(exported.directory.parent)!r}, face_process=False))
        references = scorer.embed_references([astronaut()])
        print(scorer.score(astronaut(), references, "an astronaut").clip.model)
        heavy = sorted(name for name in ("torch", "torchvision", "open_clip") if name in sys.modules)
        print("imported:", heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert "onnx float32" in result.stdout
    assert "imported: []" in result.stdout


def test_int8_graphs_are_smaller_close_to_float32_and_say_so(
    exported: ExportedClip, onnx: OnnxClipEmbedder, tmp_path: Path
) -> None:
    quantized = exported_clip("ViT-B-32", None, cache=tmp_path, precision="int8")
    int8 = OnnxClipEmbedder(quantized)
    images = shapes()

    cosines = (int8.embed(images) * onnx.embed(images)).sum(axis=1)
    text_cosines = (int8.embed_texts(PROMPTS) * onnx.embed_texts(PROMPTS)).sum(axis=1)

    assert int8.model_name == "open_clip ViT-B-32 (random weights, uncalibrated, onnx int8)"
    assert cosines.min() > 0.99
    assert text_cosines.min() > 0.99
    assert quantized.image_graph.stat().st_size < exported.image_graph.stat().st_size / 3
    meta = json.loads((quantized.directory / "meta.json").read_text())
    assert min(meta["int8_lowest_cosine_to_float32"].values()) > 0.99
    assert quantized.directory != exported.directory


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [("onnx", "bfloat16", "needs LIKENESS_SCORING_CLIP_RUNTIME=torch"), ("torch", "int8", "needs .*=onnx")],
)
def test_a_precision_the_runtime_lacks_is_a_clear_error(runtime: str, precision: str, message: str) -> None:
    settings = ScoringSettings.model_validate({"clip_runtime": runtime, "clip_precision": precision})
    with pytest.raises(ScoringModelError, match=message):
        build_clip_embedder(settings, threads=1)
