"""`likeness calibrate` on real labelled photos (../shared/data/faces beside the checkout).

Photos never enter this repository (their copyright is not stated); CI has the folder and sets
LIKENESS_REQUIRE_DATASETS=1, which turns the skip into a failure.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from rich.console import Console

from infra.calibrate import run_calibration
from services.scoring.adapters.face import DlibFaceEmbedder
from services.scoring.calibration import profile_from_report
from tests.integration.test_face_dataset import dataset_dir

pytestmark = pytest.mark.dataset

MIN_AUC = 0.999
MIN_ACCURACY_AT_SAVED_THRESHOLD = 0.998


def test_calibration_on_the_labelled_faces() -> None:
    faces = dataset_dir()
    embedder = DlibFaceEmbedder()
    started = time.perf_counter()

    report = run_calibration(faces / "pairs.csv", faces, embedder=embedder, threshold=0.6, console=Console(stderr=True))
    profile = profile_from_report(report, name="dataset", created_at=datetime.now(UTC))
    elapsed_s = time.perf_counter() - started

    print(
        f"\ncalibration on {report.source} with {report.face_model} in {elapsed_s:.1f} s: "
        f"{report.same_pairs} same and {report.different_pairs} different pairs scored, "
        f"{len(report.no_face_pairs)} without a face; AUC {report.auc:.6f}; "
        f"EER {report.eer:.4f} at {report.at_eer.threshold:.4f} (accuracy {report.at_eer.accuracy:.4f}); "
        f"at 0.6 accuracy {report.in_use.accuracy:.4f}, TPR {report.in_use.true_positive_rate:.4f}, "
        f"FPR {report.in_use.false_positive_rate:.4f}; best accuracy {report.at_best_accuracy.accuracy:.4f} "
        f"at {report.at_best_accuracy.threshold:.4f}"
    )
    assert (report.same_pairs, report.different_pairs, report.no_face_pairs) == (159, 1552, ())
    assert report.auc >= MIN_AUC
    assert profile.face_same_below == report.at_eer.threshold
    assert profile.figures.accuracy >= MIN_ACCURACY_AT_SAVED_THRESHOLD
    assert report.in_use.accuracy >= 1709 / 1711  # the dataset's reference figure is 1,710 of 1,711
