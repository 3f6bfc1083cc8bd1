"""dlib in a child process, so face work runs on one core while CLIP runs on the other.

dlib holds the GIL for each whole call (measured: two threads observing faces finish only 1.10x
faster than one), so a thread cannot overlap it with CLIP; a process can. The child loads only
dlib (about 110 MB resident, no torch); images go to it pickled, observations come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from PIL import Image

from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.ports import FaceObservation, ScoringModelError

_PR_SET_PDEATHSIG = 1
_embedder: DlibFaceEmbedder | None = None  # the child's own


def _start_child(jitters: int, max_upsample: int) -> None:
    global _embedder
    if sys.platform.startswith("linux"):  # die with the parent, even when it is SIGKILLed
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _embedder = DlibFaceEmbedder(jitters=jitters, max_upsample=max_upsample)


def _model_name() -> str:
    assert _embedder is not None
    return _embedder.model_name


def _observe_all(images: Sequence[Image.Image], max_candidates: int) -> list[FaceObservation]:
    assert _embedder is not None
    return [_embedder.observe(image, max_candidates=max_candidates) for image in images]


class ProcessFaceEmbedder:
    """A FaceEmbedder (dlib, as DlibFaceEmbedder) whose work runs in one child process.

    `observe_all` returns a Future, so the caller can run CLIP while the child finds faces.
    Start-up fails here, with dlib's own error, if the child cannot load the models.
    """

    def __init__(self, *, jitters: int = 1, max_upsample: int = 1) -> None:
        # spawn: a clean child that imports only what it needs, never a fork of torch's threads
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(jitters, max_upsample),
        )
        try:
            self._model_name = self._pool.submit(_model_name).result()
        except BrokenProcessPool as error:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise ScoringModelError(f"the face-model process could not start: {error}") from error

    @property
    def model_name(self) -> str:
        return self._model_name

    def observe_all(self, images: Sequence[Image.Image], *, max_candidates: int = 1) -> Future[list[FaceObservation]]:
        return self._pool.submit(_observe_all, list(images), max_candidates)

    def observe(self, image: Image.Image, *, max_candidates: int = 1) -> FaceObservation:
        return self.observe_all([image], max_candidates=max_candidates).result()[0]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
