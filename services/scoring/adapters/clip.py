"""Whole-image embeddings with open_clip: random weights by default, real ones from a local file.

Model hubs are unreachable where Likeness runs its tests, so real weights are a deployment
setting (a file path, or a hub tag already in the local Hugging Face cache), never a test
dependency. With random weights the embeddings are deterministic but meaningless, and every
score made with them says `calibrated=False`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import open_clip
import torch
from PIL import Image

from services.scoring.adapters.clip_common import PromptEmbeddings, cpu_has_bf16, weights_kind, weights_label
from services.scoring.adapters.rgb import to_rgb
from services.scoring.ports import ModelWeightsUnavailable


class OpenClipImageEmbedder:
    """An open_clip image tower behind the ImageEmbedder port.

    `weights`:
    - None: random initialisation, seeded with `seed` (same weights, same scores, every run);
      `calibrated` is False.
    - a path to an existing file: loaded from that file; `calibrated` is True.
    - anything else: an open_clip pretrained tag (e.g. "laion2b_s34b_b79k"). With `offline`
      (the default) it must already be in the local Hugging Face cache, and a miss fails at
      once instead of after ~46 s of retries.

    `threads` sets torch's intra-op thread count for the whole process (a torch global).
    `prompt_adherence` keeps the text tower for `embed_texts` (CLIP-T); without it the tower is
    freed (about 250 MB in float32 for ViT-B-32) and `embed_texts` raises.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        weights: str | None = None,
        *,
        device: str = "cpu",
        threads: int | None = None,
        offline: bool = True,
        batch_size: int = 16,
        seed: int = 0,
        precision: Precision = "float32",
        prompt_adherence: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads is not None:
            if threads < 1:
                raise ValueError("threads must be >= 1")
            torch.set_num_threads(threads)
        self._architecture = model_name
        self._device = torch.device(device)
        self._batch_size = batch_size
        self._dtype = _dtype(precision)
        kind = weights_kind(model_name, weights)
        if kind == "random":
            # made in the target precision from the start: no float32 copy to peak memory (~600 MB)
            with torch.random.fork_rng(devices=[]), _default_dtype(self._dtype):
                torch.manual_seed(seed)
                model, preprocess = _create(model_name, None, device)
        else:
            assert weights is not None
            model, preprocess = _load(model_name, weights, device, offline=offline)
        self._weights_label = weights_label(weights)
        self._calibrated = kind != "random"
        model.eval()
        self._tokenizer: Any = open_clip.get_tokenizer(model_name) if prompt_adherence else None
        if not prompt_adherence:
            _drop_text_tower(model)
        if self._dtype != torch.float32:
            model.to(self._dtype)
        _release_freed_memory()
        self._model: Any = model
        self._preprocess: Any = preprocess
        self._dimension = int(model.visual.output_dim)
        self._texts = PromptEmbeddings(self._dimension)

    @property
    def model_name(self) -> str:
        precision = "" if self._dtype == torch.float32 else f", {str(self._dtype).removeprefix('torch.')}"
        return f"open_clip {self._architecture} ({self._weights_label}{precision})"

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    @property
    def module(self) -> Any:
        """The open_clip model itself (what `clip_export` turns into ONNX graphs)."""
        return self._model

    @property
    def weights_label(self) -> str:
        return self._weights_label

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        rows: list[npt.NDArray[np.float32]] = []
        with torch.inference_mode():
            for start in range(0, len(images), self._batch_size):
                batch = torch.stack(
                    [self._preprocess(to_rgb(image)) for image in images[start : start + self._batch_size]]
                ).to(self._device)
                # normalise in float32: a bfloat16 norm is only good to about 1e-2
                features = torch.nn.functional.normalize(
                    self._model.encode_image(batch.to(self._dtype)).float(), dim=-1
                )
                rows.append(features.float().cpu().numpy())
        return self._stacked(rows)

    @property
    def prompt_adherence(self) -> bool:
        return self._tokenizer is not None

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalised text embeddings in the image embeddings' space (prompts longer than 77 tokens are cut).

        A character's shots often share prompts: each distinct text is embedded once and kept (LRU).
        """
        if self._tokenizer is None:
            raise RuntimeError("this embedder was made with prompt_adherence=False: its text tower is gone")
        return self._texts.get(texts, self._encode_texts, batch_size=self._batch_size)

    def _encode_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            tokens = self._tokenizer(texts).to(self._device)
            features = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
            return np.asarray(features.cpu().numpy(), dtype=np.float32)

    def _stacked(self, rows: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        if not rows:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


Precision = Literal["float32", "bfloat16", "auto"]


def _dtype(precision: Precision) -> torch.dtype:
    """bfloat16 halves the towers' memory (~175 MB image, ~125 MB text for ViT-B-32) and, natively, their time."""
    if precision == "auto":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


_TEXT_TOWER = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")


def _drop_text_tower(model: Any) -> None:
    """Image similarity alone needs only the image tower: free the text tower (about 250 MB for ViT-B-32)."""
    for name in _TEXT_TOWER:
        if hasattr(model, name):
            setattr(model, name, None)


def _release_freed_memory() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):  # hand the freed pages back to the OS now, not at some later malloc
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _create(model_name: str, pretrained: str | None, device: str) -> tuple[Any, Any]:
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    return model, preprocess


def _load(model_name: str, weights: str, device: str, *, offline: bool) -> tuple[Any, Any]:
    try:
        with _hub_offline(offline):
            return _create(model_name, weights, device)
    except Exception as error:
        where = "the local Hugging Face cache (offline)" if offline else "the model hub"
        raise ModelWeightsUnavailable(
            f"Cannot load open_clip {model_name} weights {weights!r} from "
            f"{'that file' if Path(weights).is_file() else where}: {error}. Download the checkpoint "
            "(open_clip_pytorch_model.bin or open_clip_model.safetensors) on a machine with "
            "internet access, copy it here, and pass its file path as the weights setting."
        ) from error


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub fail at once instead of retrying an unreachable hub.

    The HF_HUB_OFFLINE variable is read when huggingface_hub is imported (open_clip imports
    it), so setting it now is not enough: the module constant is switched too, then restored.
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    previous_env = os.environ.get("HF_HUB_OFFLINE")
    previous_constant = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_constant
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env
