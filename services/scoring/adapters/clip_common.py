"""What both CLIP runtimes (torch and onnxruntime) share, without importing torch."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.scoring.ports import ModelWeightsUnavailable

PROMPT_CACHE_SIZE = 4096  # prompt embeddings kept: 2 KB each for ViT-B-32
_WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as weights:
        while chunk := weights.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def weights_kind(model_name: str, weights: str | None) -> str:
    """'random', 'file' or 'tag' (a hub tag); a missing file fails here, with what to do about it."""
    if weights is None:
        return "random"
    if Path(weights).is_file():
        return "file"
    if weights.endswith(_WEIGHT_FILE_SUFFIXES) or os.sep in weights:
        raise ModelWeightsUnavailable(
            f"open_clip weights {weights!r} is not an existing file. Download the {model_name} "
            "checkpoint on a machine with internet access, copy it here and pass its path."
        )
    return "tag"


def weights_label(weights: str | None) -> str:
    """How a score names its CLIP weights: a file by its name and digest, so new weights make a new scorer key."""
    kind = "random" if weights is None else ("file" if Path(weights).is_file() else "tag")
    if kind == "random":
        return "random weights, uncalibrated"
    assert weights is not None
    if kind == "file":
        return f"{Path(weights).name} sha256:{file_sha256(Path(weights))[:12]}"
    return weights


def cpu_has_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere it is emulated, slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class PromptEmbeddings:
    """Each distinct prompt embedded once and kept (LRU): a character's shots often share prompts."""

    def __init__(self, dimension: int, *, size: int = PROMPT_CACHE_SIZE) -> None:
        self._dimension = dimension
        self._size = size
        self._rows: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()

    def get(
        self,
        texts: Sequence[str],
        encode: Callable[[list[str]], npt.NDArray[np.float32]],
        *,
        batch_size: int,
    ) -> npt.NDArray[np.float32]:
        """Rows for `texts` in order; `encode` gets only the texts not kept yet, `batch_size` at a time."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._rows))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for text, row in zip(chunk, encode(chunk), strict=True):
                self._rows[text] = row
        rows = []
        for text in texts:
            self._rows.move_to_end(text)
            rows.append(self._rows[text])
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)
        if not rows:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)
