"""`likeness calibrate` as an operator runs it, on public-domain photos that ship inside packages."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import ImageOps

from services.scoring.adapters.models import thresholds_from
from services.scoring.calibration import CalibrationProfile
from services.scoring.settings import ScoringSettings
from tests.sample_images import astronaut, darkened, grace_hopper, plain_gray

MODEL = "dlib_face_recognition_resnet_model_v1 (HOG, jitters=1)"
PAIRS = [
    ("astronaut.png", "astronaut-mirrored.png", "same"),
    ("astronaut.png", "people/astronaut-head.png", "same"),
    ("astronaut-mirrored.png", "people/astronaut-dark.jpg", "same"),
    ("hopper.jpg", "hopper-mirrored.png", "same"),
    ("astronaut.png", "hopper.jpg", "different"),
    ("astronaut-mirrored.png", "hopper-mirrored.png", "different"),
    ("people/astronaut-head.png", "hopper.jpg", "different"),
    ("astronaut.png", "gray.png", "same"),  # no face in gray.png: counted, listed, not scored
]


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIKENESS_SCORING_")}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "calibrate", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "LIKENESS_CALIBRATION_DIR": str(data_dir / "calibration"), "COLUMNS": "200"},
        check=False,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "people").mkdir()
    photo, hopper = astronaut(), grace_hopper()
    photo.save(folder / "astronaut.png")
    ImageOps.mirror(photo).save(folder / "astronaut-mirrored.png")
    photo.crop((100, 0, 400, 300)).save(folder / "people" / "astronaut-head.png")
    darkened(photo, 0.3).save(folder / "people" / "astronaut-dark.jpg", quality=80)
    hopper.save(folder / "hopper.jpg")
    ImageOps.mirror(hopper).save(folder / "hopper-mirrored.png")
    plain_gray(256).save(folder / "gray.png")
    return folder


def write_pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_a", "image_b", "label"])
        writer.writerows(rows)
    return path


def test_calibrate_prints_the_figures_and_saves_a_profile(images: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "tiny.csv", PAIRS)
    data_dir = tmp_path / "data"

    result = cli("--pairs", str(pairs), "--images", str(images), "--save", "tiny", data_dir=data_dir)

    out = result.stdout
    print(out, result.stderr)
    assert result.returncode == 0, out + result.stderr
    assert f"face model: {MODEL}" in out
    assert "Face calibration on tiny.csv" in out
    assert re.search(r"pairs in file\s*│\s*8\s*│", out)
    assert "7 (4 same, 3 different)" in out
    assert "gray.png" in out
    assert "astronaut.png  vs  gray.png" in out
    assert "ROC AUC" in out
    assert "1.000000" in out  # every same pair here is far closer than every different one
    assert "in use (setting face_same_below)" in out
    assert "1.0000 (7/7)" in out  # accuracy at 0.6 and at the EER threshold

    saved = data_dir / "calibration" / "tiny.json"
    assert f"Saved profile 'tiny' to {saved}" in out.replace("\n", "")
    profile = CalibrationProfile.from_json(saved.read_text())
    assert profile.name == "tiny"
    assert profile.face_model == MODEL
    assert profile.face_same_below == profile.face_uncertain_below == profile.figures.threshold
    assert (profile.figures.pairs, profile.figures.no_face_pairs, profile.figures.accuracy) == (7, 1, 1.0)
    assert profile.figures.source == "tiny.csv"
    # The scoring service takes its thresholds from the saved file.
    settings = ScoringSettings(calibration_profile=saved)
    thresholds, profile_name = thresholds_from(settings, face_model=MODEL)
    assert thresholds.face_same_below == profile.face_same_below
    assert profile_name == "tiny"


def test_a_threshold_and_a_band(images: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "tiny.csv", PAIRS)
    data_dir = tmp_path / "data"

    result = cli(
        *("--pairs", str(pairs), "--images", str(images)),
        *("--threshold", "0.65", "--save", "banded", "--uncertain-band", "0.1"),
        data_dir=data_dir,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "in use (--threshold)" in result.stdout
    assert "0.6500" in result.stdout
    # Astronaut and Grace Hopper mirrored are 0.645 apart, the closest different pair here.
    assert "0.8571 (6/7)" in result.stdout
    assert "0.3333" in result.stdout  # one of three different pairs called same
    profile = CalibrationProfile.from_json((data_dir / "calibration" / "banded.json").read_text())
    assert profile.face_same_below == pytest.approx(profile.figures.threshold - 0.05)
    assert profile.face_uncertain_below == pytest.approx(profile.figures.threshold + 0.05)


# Three identity groups by the pairs: the astronaut (gray.png joins through its "same" pair), Grace
# Hopper, and the darkened astronaut, which is only ever compared with Grace Hopper.
FOLD_PAIRS = [
    ("astronaut.png", "astronaut-mirrored.png", "same"),
    ("astronaut.png", "people/astronaut-head.png", "same"),
    ("astronaut-mirrored.png", "people/astronaut-head.png", "same"),
    ("astronaut.png", "gray.png", "same"),  # not scored
    ("hopper.jpg", "hopper-mirrored.png", "same"),
    ("people/astronaut-dark.jpg", "hopper.jpg", "different"),
    ("people/astronaut-dark.jpg", "hopper-mirrored.png", "different"),
    ("astronaut.png", "hopper.jpg", "different"),
    ("astronaut-mirrored.png", "hopper-mirrored.png", "different"),
]


def test_folds_cross_validate_across_people(images: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "people.csv", FOLD_PAIRS)

    result = cli("--pairs", str(pairs), "--images", str(images), "--folds", "3", data_dir=tmp_path / "data")

    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "Face calibration on people.csv" in out  # the usual figures come first
    assert "Identity-disjoint cross-validation on people.csv: 3 folds of whole people (3 identity groups" in out
    # Fold 1 is the astronaut: trained on Hopper's same pair and the dark astronaut against Hopper.
    assert re.search(
        r"│ 1 │ 1 \(4\) │ 1 / 2 │ 3 / 0 │ 0\.\d{4} │ 1\.0000 \(3/3\) │ 1\.0000 │ n/a │ 1\.0000 \(3/3\) │", out
    )
    # Fold 2 (Hopper) would train on the astronaut's same pairs alone; fold 3 has nothing to test.
    assert re.search(r"│ 2 │ 1 \(2\) │ 3 / 0 │ 1 / 0 │ not evaluated │", out)
    assert (
        "Fold 2 not evaluated: its training pairs (both images in other folds) have 3 'same' and 0 'different'" in out
    )
    assert "Fold 3 not evaluated: no test pairs: no scored pair has both images in this fold" in out
    assert "Pooled held-out accuracy 1.0000 (3/3) over the test pairs of 1 of 3 folds" in out
    assert "the fixed threshold in use (setting face_same_below) 0.6000 gets 1.0000 (3/3)" in out
    assert "4 scored pair(s) join people in two different folds" in out
    assert "1 pair(s) with no face are not used." in out


@pytest.mark.parametrize(
    ("rows", "args", "message"),
    [
        ([("astronaut.png", "hopper.jpg", "maybe")], (), "unknown label 'maybe'; use `same` or `different`"),
        ([("astronaut.png", "nobody.png", "same")], (), "nobody.png"),
        ([("astronaut.png", "hopper.jpg", "different")], ("--save", "Bad Name"), "a-z, 0-9"),
        ([("astronaut.png", "hopper.jpg", "different")], ("--folds", "1"), "--folds must be at least 2, got 1"),
        (FOLD_PAIRS, ("--folds", "4"), "into 3 identity group(s)"),
        (FOLD_PAIRS, ("--folds", "4"), "To fix: choose --folds from 2 to 3"),
    ],
)
def test_mistakes_exit_2_and_say_what_to_fix(
    images: Path, tmp_path: Path, rows: list[tuple[str, str, str]], args: tuple[str, ...], message: str
) -> None:
    pairs = write_pairs(tmp_path / "bad.csv", rows)

    result = cli("--pairs", str(pairs), "--images", str(images), *args, data_dir=tmp_path / "data")

    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "data").exists()
