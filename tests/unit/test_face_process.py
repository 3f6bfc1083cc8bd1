"""dlib in a child process: the same observations as in-process, overlapping CLIP, and no orphan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.adapters.face_process import ProcessFaceEmbedder
from services.scoring.ports import BackgroundFaceEmbedder, FaceObservation
from services.scoring.scorer import Scorer, ShotToScore
from tests.fakes import FakeImageEmbedder
from tests.sample_images import astronaut, astronaut_variants, grace_hopper, plain_gray
from tests.unit.two_people import side_by_side


@pytest.fixture(scope="module")
def in_child() -> Iterator[ProcessFaceEmbedder]:
    embedder = ProcessFaceEmbedder()
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def in_process() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


def same_observation(a: FaceObservation, b: FaceObservation) -> bool:
    return (
        a.faces_found == b.faces_found
        and a.notes == b.notes
        and len(a.candidates) == len(b.candidates)
        and all(
            x.box == y.box and x.detector_score == y.detector_score and np.array_equal(x.descriptor, y.descriptor)
            for x, y in zip(a.candidates, b.candidates, strict=True)
        )
    )


def test_the_child_sees_exactly_what_dlib_sees_in_process(
    in_child: ProcessFaceEmbedder, in_process: DlibFaceEmbedder
) -> None:
    images = [astronaut(), grace_hopper(), plain_gray(), side_by_side(), *astronaut_variants().values()]
    observed = in_child.observe_all(images, max_candidates=5).result(timeout=120)
    assert len(observed) == len(images)
    for image, child in zip(images, observed, strict=True):
        assert same_observation(child, in_process.observe(image, max_candidates=5))
    assert in_child.model_name == in_process.model_name
    assert isinstance(in_child, BackgroundFaceEmbedder)
    assert not isinstance(in_process, BackgroundFaceEmbedder)


def test_scores_are_the_same_whether_faces_are_found_in_the_background_or_not(
    in_child: ProcessFaceEmbedder, in_process: DlibFaceEmbedder
) -> None:
    background, inline = Scorer(in_child, FakeImageEmbedder()), Scorer(in_process, FakeImageEmbedder())
    shots = [astronaut_variants()["mirrored"], grace_hopper(), plain_gray(), side_by_side()]
    ours = background.score_batch([ShotToScore(s, background.embed_references([astronaut()])) for s in shots])
    theirs = inline.score_batch([ShotToScore(s, inline.embed_references([astronaut()])) for s in shots])
    assert [s.verdict for s in ours] == ["same", "different", "no_face", "same"]
    assert [s.model_dump(exclude={"scoring_ms"}) for s in ours] == [
        s.model_dump(exclude={"scoring_ms"}) for s in theirs
    ]


CHILD_PROGRAM = """
import sys, time
from services.scoring.adapters.face_process import ProcessFaceEmbedder
if __name__ == "__main__":
    embedder = ProcessFaceEmbedder()
    print(embedder._pool._processes and list(embedder._pool._processes)[0], flush=True)
    time.sleep(600)
"""


def test_the_face_process_dies_with_a_killed_parent(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "parent.py")
    with open(script, "w", encoding="utf-8") as out:
        out.write(CHILD_PROGRAM)
    parent = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid), "the face process outlived its SIGKILLed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            return "State:\tZ" not in status.read()  # a zombie is gone, waiting only to be reaped
    except FileNotFoundError:
        return False
