"""open_clip's towers on onnxruntime: the scoring worker runs CLIP without importing torch.

Why: in the worker, torch (a CUDA build), torchvision and open_clip cost about 730 MB resident
before any weights, and the file pages of torch's CUDA libraries move that figure by a further
~250 MB with the state of the page cache. That alone put the worker over its 1.5 GB budget.
Here the towers are exported once per architecture and weights, by a short-lived child process
that has torch (`clip_export`), into a cache directory; the worker loads onnxruntime (~40 MB)
and the float32 graphs, and reproduces open_clip's preprocessing and tokenizer in numpy.

The cache key covers the architecture, the weights (a file by its sha256), the seed of random
weights and the torch and open_clip versions, so changed weights are exported again. Exports
are written to a temporary directory and renamed into place under a file lock: two workers
starting together export once, and a crash mid-export leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime  # type: ignore[import-untyped]
from PIL import Image

from services.scoring.adapters.clip_common import PromptEmbeddings, file_sha256, weights_kind
from services.scoring.adapters.clip_tokens import ClipTokenizer
from services.scoring.adapters.rgb import to_rgb
from services.scoring.ports import ModelWeightsUnavailable, ScoringModelError

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when clip_export writes different graphs or metadata
_IMAGE_GRAPH, _TEXT_GRAPH, _META = "image.onnx", "text.onnx", "meta.json"  # clip_export's names
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ExportedClip:
    """One export in the cache: its graphs and what the worker needs to feed them."""

    directory: Path
    architecture: str
    weights_label: str
    calibrated: bool
    dimension: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    context_length: int
    precision: OnnxPrecision

    @classmethod
    def read(cls, directory: Path) -> ExportedClip:
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        return cls(
            directory=directory,
            architecture=meta["architecture"],
            weights_label=meta["weights_label"],
            calibrated=bool(meta["calibrated"]),
            dimension=int(meta["dimension"]),
            image_size=int(meta["image_size"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            interpolation=meta["interpolation"],
            context_length=int(meta["context_length"]),
            precision=meta["precision"],
        )

    @property
    def image_graph(self) -> Path:
        return self.directory / _IMAGE_GRAPH

    @property
    def text_graph(self) -> Path:
        return self.directory / _TEXT_GRAPH


OnnxPrecision = Literal["float32", "int8"]


def export_key(architecture: str, weights: str | None, *, seed: int = 0, precision: OnnxPrecision = "float32") -> str:
    """What makes two exports the same: architecture, weights, seed, precision, torch and open_clip versions."""
    kind = weights_kind(architecture, weights)
    if kind == "random":
        identity = f"random seed {seed}"
    elif kind == "file":
        identity = f"sha256 {file_sha256(Path(weights or ''))}"
    else:
        identity = f"tag {weights}"
    versions = {name: importlib.metadata.version(name) for name in ("torch", "open_clip_torch")}
    text = json.dumps([EXPORT_FORMAT, architecture, identity, precision, versions], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def export_directory(
    architecture: str, weights: str | None, *, cache: Path, seed: int = 0, precision: OnnxPrecision = "float32"
) -> Path:
    """Where the export for these weights lives; it is finished once it holds meta.json (`is_finished`)."""
    return cache / f"{architecture}-{precision}-{export_key(architecture, weights, seed=seed, precision=precision)}"


def is_finished(directory: Path) -> bool:
    return (directory / _META).is_file()


def exported_clip(
    architecture: str,
    weights: str | None,
    *,
    cache: Path,
    offline: bool = True,
    seed: int = 0,
    precision: OnnxPrecision = "float32",
) -> ExportedClip:
    """The export for these weights, from the cache, or made now (tens of seconds, in a child process)."""
    directory = export_directory(architecture, weights, cache=cache, seed=seed, precision=precision)
    if is_finished(directory):
        return ExportedClip.read(directory)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f"{directory.name}.lock"):
        if is_finished(directory):  # another worker exported it while this one waited
            return ExportedClip.read(directory)
        for stale in cache.glob(f".{directory.name}.*.partial"):  # left by a worker killed mid-export
            shutil.rmtree(stale, ignore_errors=True)
        partial = cache / f".{directory.name}.{os.getpid()}.partial"
        try:
            _export_in_child(architecture, weights, seed=seed, offline=offline, directory=partial, precision=precision)
            partial.rename(directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return ExportedClip.read(directory)


def _export_in_child(
    architecture: str, weights: str | None, *, seed: int, offline: bool, directory: Path, precision: OnnxPrecision
) -> None:
    """Run `clip_export` as its own program: it imports torch; this process never does.

    A program, not a multiprocessing child: spawn would re-run the caller's main module first, and a
    caller that exports at import time would wait on its own lock.
    """
    command = [sys.executable, "-m", "services.scoring.adapters.clip_export", architecture, str(directory)]
    command += ["--seed", str(seed), "--precision", precision, "--offline" if offline else "--no-offline"]
    if weights is not None:
        command += ["--weights", weights]
    log.info("exporting open_clip %s to ONNX (once per model and weights; about 20-40 s)", architecture)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return
    failure = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else []
    try:
        reported = json.loads(failure[0]) if failure else {}
    except json.JSONDecodeError:
        reported = {}
    if reported.get("error") == "weights":
        raise ModelWeightsUnavailable(reported["message"])
    if "message" in reported:
        raise ScoringModelError(reported["message"])
    tail = "\n".join(result.stderr.strip().splitlines()[-15:])
    raise ScoringModelError(f"the CLIP export program failed (exit {result.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class OnnxClipEmbedder:
    """An ImageEmbedder and TextEmbedder: open_clip's exported towers on onnxruntime.

    In float32 the embeddings match open_clip's to about 1e-5 (tested). int8 graphs are ~2.6x
    faster on one core and a quarter of the size, and drift a little (the export records by how
    much); `prompt_adherence=False` loads the image tower only.
    """

    def __init__(
        self,
        exported: ExportedClip,
        *,
        threads: int | None = None,
        batch_size: int = 16,
        prompt_adherence: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._exported = exported
        self._batch_size = batch_size
        options = onnxruntime.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError("threads must be >= 1")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._images = _session(exported.image_graph, options)
        self._text = _session(exported.text_graph, options) if prompt_adherence else None
        self._tokenizer = ClipTokenizer(context_length=exported.context_length) if prompt_adherence else None
        self._texts = PromptEmbeddings(exported.dimension)
        self._mean = np.asarray(exported.mean, dtype=np.float32).reshape(1, 1, 3)
        self._std = np.asarray(exported.std, dtype=np.float32).reshape(1, 1, 3)

    @property
    def model_name(self) -> str:
        exported = self._exported
        return f"open_clip {exported.architecture} ({exported.weights_label}, onnx {exported.precision})"

    @property
    def calibrated(self) -> bool:
        return self._exported.calibrated

    @property
    def dimension(self) -> int:
        return self._exported.dimension

    @property
    def prompt_adherence(self) -> bool:
        return self._text is not None

    def embed(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        rows = []
        for start in range(0, len(images), self._batch_size):
            batch = np.stack([self.pixels(image) for image in images[start : start + self._batch_size]])
            rows.append(_normalised(self._images.run(None, {"pixels": batch})[0]))
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalised text embeddings in the image embeddings' space (prompts longer than 77 tokens are cut)."""
        if self._text is None or self._tokenizer is None:
            raise RuntimeError("this embedder was made with prompt_adherence=False: its text tower is not loaded")
        return self._texts.get(texts, self._encode_texts, batch_size=self._batch_size)

    def _encode_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        assert self._text is not None
        assert self._tokenizer is not None
        return _normalised(self._text.run(None, {"tokens": self._tokenizer(texts)})[0])

    def pixels(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """open_clip's eval preprocessing: shortest side to the input size, centre crop, normalise; (3, H, W)."""
        image = to_rgb(image)
        size = self._exported.image_size
        width, height = image.size
        if min(width, height) != size:  # torchvision's Resize(size): the short side to `size`, the long one floored
            short, long = sorted((width, height))
            scaled = (size, int(size * long / short))
            new_size = scaled if width <= height else scaled[::-1]
            image = image.resize(new_size, _INTERPOLATION[self._exported.interpolation])
            width, height = image.size
        top, left = round((height - size) / 2.0), round((width - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
        values = (np.asarray(image, dtype=np.float32) / 255.0 - self._mean) / self._std
        return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)


def _session(graph: Path, options: Any) -> Any:
    try:
        return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise ScoringModelError(
            f"onnxruntime cannot load {graph} ({error}); delete {graph.parent} and it will be exported again"
        ) from error


def _normalised(rows: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)
