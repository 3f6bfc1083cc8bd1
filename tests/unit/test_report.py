"""The demo's results output: rows, summary, terminal table, CSV and the static HTML page."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console
from rich.text import Text

from contracts import ClipScore, FaceScore, ShotScore, Verdict
from infra.report import (
    CSV_COLUMNS,
    SIMULATED_BANNER,
    STATS_HEADERS,
    UNCALIBRATED_BANNER,
    results_table,
    shot_rows,
    stats_notes,
    stats_table,
    summary,
    write_csv,
    write_html,
)
from services.scoring.statistics import ScoreStats, score_stats

SCENARIOS = ("close-up portrait", "wide shot", "profile noir", "low light", "action")
DRIFTED_SHOT = 4  # 1-based: judged different, and the simulator did drift it
NO_FACE_SHOT = 7
FAILED_SHOT = 11
UNCERTAIN_SHOT = 13


def tiny_png(colour: tuple[int, int, int], size: tuple[int, int] = (12, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def image_ref(data: bytes, size: tuple[int, int] = (12, 16)) -> dict[str, Any]:
    sha256 = hashlib.sha256(data).hexdigest()
    return {
        "key": f"images/{sha256}",
        "sha256": sha256,
        "content_type": "image/png",
        "width": size[0],
        "height": size[1],
        "size_bytes": len(data),
    }


def sample_character(
    *, simulated: bool = True, calibrated: bool = False, name: str = "Ada Quill"
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """15 shots across 5 scenarios: one drifted and judged different, one no_face, one failed."""
    images: dict[str, bytes] = {}
    reference = tiny_png((200, 150, 120), (16, 16))
    images[hashlib.sha256(reference).hexdigest()] = reference
    shots = []
    for index in range(1, 16):
        scenario = SCENARIOS[(index - 1) % 5]
        verdict = {DRIFTED_SHOT: "different", NO_FACE_SHOT: "no_face", UNCERTAIN_SHOT: "uncertain"}.get(index, "same")
        data = tiny_png((index * 15, 100, 255 - index * 15))
        failed = index == FAILED_SHOT
        if not failed:
            images[hashlib.sha256(data).hexdigest()] = data
        distance = {DRIFTED_SHOT: 0.81, NO_FACE_SHOT: None, UNCERTAIN_SHOT: 0.57}.get(index, 0.30 + index / 100)
        shots.append(
            {
                "shot_id": str(uuid.UUID(int=index)),
                "status": "failed" if failed else "scored",
                "params": {
                    "prompt": f"{scenario} of Ada, take {index}",
                    "negative_prompt": "",
                    "aspect_ratio": "1:1",
                    "seed": index,
                    "steps": 28,
                    "guidance": 3.5,
                    "scenario": scenario,
                },
                "provider": "simulator" if simulated else "fal",
                "image": None if failed else image_ref(data),
                "latency_ms": None if failed else 1000.0 + index * 100.123456,
                "cost_usd": None if failed else 0.003,
                "attempts": 3 if failed else 1,
                "simulation": None
                if not simulated or failed
                else {"simulated": True, "transform": f"crop {index}", "drifted": index == DRIFTED_SHOT},
                "score": None
                if failed
                else {
                    "verdict": verdict,
                    "face": {
                        "faces_found": 0 if index == NO_FACE_SHOT else 1,
                        "distance": distance,
                        "mean_distance": None if distance is None else distance + 0.05,
                        "same_below": 0.6,
                        "model": "dlib_resnet_v1",
                    },
                    "clip": {"image_similarity": 0.9 - index / 100, "calibrated": calibrated, "model": "ViT-B-32"},
                    "scorer_version": "1",
                    "scoring_ms": 40.0,
                },
                "failure": {"stage": "generation", "reason": "provider timed out 3 times"} if failed else None,
            }
        )
    character = {
        "character_id": str(uuid.uuid4()),
        "name": name,
        "strategy": "instant_reference",
        "provider": "simulator" if simulated else "fal",
        "status": "completed",
        "created_at": "2025-01-02T03:04:05+00:00",
        "identity": {
            "state": "ready",
            "identity_ref": "sim://ada",
            "training_seconds": 0.0,
            "cost_usd": 0.01,
            "simulated": simulated,
        },
        "references": [image_ref(reference, (16, 16))],
        "shots": shots,
    }
    return character, images


# --- rows and summary ----------------------------------------------------------------------------


def test_rows_follow_the_shots() -> None:
    character, _ = sample_character()

    rows = shot_rows(character)

    assert [row.index for row in rows] == list(range(1, 16))
    assert {row.scenario for row in rows} == set(SCENARIOS)
    drifted = rows[DRIFTED_SHOT - 1]
    assert (drifted.verdict, drifted.drifted, drifted.gate) == ("different", True, "caught")
    no_face = rows[NO_FACE_SHOT - 1]
    assert (no_face.verdict, no_face.faces_found, no_face.face_distance) == ("no_face", 0, None)
    failed = rows[FAILED_SHOT - 1]
    assert failed.verdict == "failed: generation"
    assert failed.simulated is False
    assert failed.drifted is None
    assert rows[0].clip_calibrated is False
    assert rows[0].latency_ms == pytest.approx(1100.123456)


def test_rows_for_shots_still_in_flight() -> None:
    character, _ = sample_character()
    character["shots"].append({"shot_id": "x", "status": "generating", "params": {"prompt": "p"}})

    row = shot_rows(character)[-1]

    assert row.verdict == "generating"
    assert row.scenario is None
    assert summary(character)["pending"] == 1


def test_summary_counts_verdicts_distance_cost_and_latency() -> None:
    character, _ = sample_character()

    stats = summary(character)

    assert stats["shots"] == 15
    assert stats["scored"] == 14
    assert stats["failed"] == 1
    assert stats["verdicts"] == {"same": 11, "uncertain": 1, "different": 1, "no_face": 1}
    distances = [row.face_distance for row in shot_rows(character) if row.face_distance is not None]
    assert stats["face_distance"]["count"] == 13
    assert stats["face_distance"]["mean"] == pytest.approx(sum(distances) / 13)
    assert stats["face_distance"]["min"] == pytest.approx(0.31)
    assert stats["face_distance"]["max"] == pytest.approx(0.81)
    assert stats["shots_cost_usd"] == pytest.approx(14 * 0.003)
    assert stats["total_cost_usd"] == pytest.approx(14 * 0.003 + 0.01)
    latencies = sorted(1000.0 + i * 100.123456 for i in range(1, 16) if i != FAILED_SHOT)
    assert stats["latency_p50_ms"] == pytest.approx((latencies[6] + latencies[7]) / 2)
    assert stats["latency_p95_ms"] == pytest.approx(latencies[12] + 0.35 * (latencies[13] - latencies[12]))
    assert (stats["simulated"], stats["clip_uncalibrated"]) == (True, True)
    assert (stats["drifted"], stats["drift_caught"], stats["drift_missed"]) == (1, 1, 0)


def scored_figures(character: dict[str, Any], scenario: str | None = None) -> tuple[list[float], list[str]]:
    """The face distances and verdicts of the scored shots, straight from the character JSON."""
    values, verdicts = [], []
    for shot in character["shots"]:
        if shot["score"] is None or scenario not in {None, shot["params"]["scenario"]}:
            continue
        verdicts.append(shot["score"]["verdict"])
        if shot["score"]["face"]["distance"] is not None:
            values.append(shot["score"]["face"]["distance"])
    return values, verdicts


def test_summary_has_consistency_statistics_for_the_character_each_scenario_and_provider() -> None:
    character, _ = sample_character()

    stats = summary(character)

    overall = stats["face_distance_stats"]
    assert overall == score_stats(*scored_figures(character))
    assert (overall.count, overall.scored, overall.passed) == (13, 14, 11)
    assert overall.mean == pytest.approx(stats["face_distance"]["mean"])
    assert list(stats["scenario_stats"]) == list(SCENARIOS)
    for scenario in SCENARIOS:
        assert stats["scenario_stats"][scenario] == score_stats(*scored_figures(character, scenario))
    # close-up portrait is shots 1, 6 and 11; 11 failed.
    assert stats["scenario_stats"]["close-up portrait"] == score_stats([0.31, 0.36], ["same", "same"])
    assert stats["provider_stats"] == {"simulator": overall}


def test_summary_of_a_character_without_shots() -> None:
    stats = summary({"name": "new", "identity": None, "shots": []})

    assert stats["shots"] == 0
    assert stats["face_distance"]["mean"] is None
    assert stats["latency_p95_ms"] is None
    assert stats["total_cost_usd"] == 0.0
    assert stats["face_distance_stats"].mean is None
    assert stats["scenario_stats"] == stats["provider_stats"] == {}


# --- terminal table ------------------------------------------------------------------------------


def render(table: Any) -> str:
    console = Console(width=220, record=True, color_system=None, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_table_shows_every_shot_and_says_when_it_is_simulated_and_uncalibrated() -> None:
    character, _ = sample_character()

    text = render(results_table(character))

    for header in ("shot", "scenario", "provider", "latency", "cost", "face identity", "verdict"):
        assert header in text
    assert "CLIP-I (uncalibrated)" in text
    assert "CLIP-T" in text
    assert "no face" in text
    assert "failed: generation" in text
    assert "sim: drifted (caught)" in text
    assert text.count("sim: clean") == 13  # 14 scored shots, less the drifted one
    assert SIMULATED_BANNER in text
    assert "random weights" in text


def test_table_for_real_calibrated_run_has_no_simulation_warnings() -> None:
    character, _ = sample_character(simulated=False, calibrated=True)

    text = render(results_table(character))

    assert "SIMULATED" not in text
    assert "uncalibrated" not in text
    assert "sim: " not in text


def test_table_prints_user_strings_verbatim_not_as_markup() -> None:
    character, _ = sample_character(name="[/bold] Ada [red]")
    character["shots"][0]["params"]["scenario"] = "[link=x]close[/link]"

    text = render(results_table(character))

    assert "[/bold] Ada [red]" in text
    assert "[link=x]close[/link]" in text


def test_table_colours_verdicts() -> None:
    character, _ = sample_character()
    table = results_table(character)
    verdicts = next(column for column in table.columns if column.header == "verdict")

    styles = {cell.plain: cell.style for cell in verdicts.cells if isinstance(cell, Text)}

    assert styles["same"] == "green"
    assert styles["uncertain"] == "yellow"
    assert styles["different"] == "red"
    assert styles["no_face"] == "red"


def test_table_marks_a_drift_the_gate_missed() -> None:
    character, _ = sample_character()
    character["shots"][DRIFTED_SHOT - 1]["score"]["verdict"] = "same"

    assert "sim: drifted (MISSED)" in render(results_table(character))
    assert summary(character)["drift_missed"] == 1


def mean_ci(stats: ScoreStats) -> str:
    assert stats.mean is not None
    assert stats.ci95_high is not None
    return f"{stats.mean:.3f} ± {stats.ci95_high - stats.mean:.3f}"


def pass_cells(stats: ScoreStats) -> tuple[str, str]:
    assert stats.pass_rate is not None
    assert stats.pass_ci95_low is not None
    assert stats.pass_ci95_high is not None
    return (
        f"{stats.pass_rate:.0%} ({stats.passed}/{stats.scored})",
        f"{stats.pass_ci95_low:.0%} to {stats.pass_ci95_high:.0%}",
    )


def table_line(text: str, label: str) -> list[str]:
    """The cells of the table row whose first cell is `label`."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_stats_table_shows_each_scenario_and_the_whole_character() -> None:
    character, _ = sample_character()
    stats = summary(character)

    text = render(stats_table(character))

    assert "Consistency by scenario" in text
    assert "and provider" not in text
    for header in STATS_HEADERS:
        assert header in text
    assert "face distance (lower = more alike)" in text
    assert 'the share of scored shots judged "same"' in text
    assert 'a face distance below 0.6 is judged "same"' in text
    overall = stats["face_distance_stats"]
    assert table_line(text, "all shots") == [
        "all shots",
        "14 of 15",
        mean_ci(overall) + " (13 faces)",
        f"{overall.std:.3f}",
        *pass_cells(overall),
    ]
    assert table_line(text, "all shots")[2:] == ["0.425 ± 0.081 (13 faces)", "0.135", "79% (11/14)", "52% to 92%"]
    action = stats["scenario_stats"]["action"]
    assert table_line(text, "action") == ["action", "3", mean_ci(action), f"{action.std:.3f}", *pass_cells(action)]
    assert table_line(text, "close-up portrait")[1] == "2 of 3", "the failed shot is counted, not scored"
    assert table_line(text, "wide shot")[2].endswith("(2 faces)"), "the no_face shot is left out of the mean"


def test_stats_table_adds_providers_when_there_are_several() -> None:
    character, _ = sample_character()
    character["shots"][0]["provider"] = "fal"

    text = render(stats_table(character))

    assert "Consistency by scenario and provider" in text
    assert table_line(text, "provider: fal")[1:] == ["1", "0.310", "—", "100% (1/1)", "21% to 100%"]
    assert table_line(text, "provider: simulator")[1] == "13 of 14"


def test_stats_table_for_a_character_without_shots() -> None:
    text = render(stats_table({"name": "new", "identity": None, "shots": []}))

    assert table_line(text, "all shots") == ["all shots", "0", "—", "—", "—", "—"]


def test_stats_table_prints_scenarios_verbatim_not_as_markup() -> None:
    character, _ = sample_character()
    for shot in character["shots"]:
        if shot["params"]["scenario"] == "action":
            shot["params"]["scenario"] = "[bold]action[/bold]"

    assert "[bold]action[/bold]" in render(stats_table(character))


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_has_one_row_per_shot_with_character_columns(tmp_path: Path) -> None:
    character, _ = sample_character(name='=HYPERLINK("http://evil")')

    path = write_csv(character, tmp_path / "out" / "results.csv")

    with path.open(newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == 15
    assert {row["character_id"] for row in rows} == {character["character_id"]}
    assert rows[0]["character_name"].startswith("'="), "a spreadsheet must not run it as a formula"
    assert [row["shot_id"] for row in rows] == [shot["shot_id"] for shot in character["shots"]]
    assert float(rows[0]["latency_ms"]) == 1000.0 + 100.123456, "floats are not rounded"
    drifted = rows[DRIFTED_SHOT - 1]
    assert (drifted["verdict"], drifted["drifted"], drifted["face_distance"]) == ("different", "true", "0.81")
    no_face = rows[NO_FACE_SHOT - 1]
    assert (no_face["faces_found"], no_face["face_distance"]) == ("0", "")
    failed = rows[FAILED_SHOT - 1]
    assert failed["verdict"] == "failed: generation"
    assert failed["failure_reason"] == "provider timed out 3 times"
    assert failed["image_sha256"] == ""
    assert rows[0]["clip_calibrated"] == "false"
    assert rows[0]["prompt"] == "close-up portrait of Ada, take 1"


# --- HTML ----------------------------------------------------------------------------------------


def test_html_shows_every_shot_and_writes_its_images(tmp_path: Path) -> None:
    character, images = sample_character()

    page = write_html(character, images, tmp_path / "report")

    html = page.read_text(encoding="utf-8")
    assert page == tmp_path / "report" / "index.html"
    for shot in character["shots"]:
        assert shot["shot_id"] in html
    written = sorted(path.name for path in (tmp_path / "report" / "images").iterdir())
    assert written == sorted(f"{sha256}.png" for sha256 in images)
    for name in written:
        assert f'src="images/{name}"' in html
        assert (tmp_path / "report" / "images" / name).read_bytes() == images[name.removesuffix(".png")]
    assert html.count('class="card ') == 15
    assert html.count(" flagged") == 4, "different, no_face, uncertain and failed cards are flagged"
    assert "ground truth: sim: drifted (caught)" in html
    assert "no image: failed at generation" in html


def test_html_banners_appear_only_when_they_apply(tmp_path: Path) -> None:
    simulated, images = sample_character(simulated=True, calibrated=False)
    real, real_images = sample_character(simulated=False, calibrated=True)

    simulated_html = write_html(simulated, images, tmp_path / "sim").read_text(encoding="utf-8")
    real_html = write_html(real, real_images, tmp_path / "real").read_text(encoding="utf-8")

    assert SIMULATED_BANNER in simulated_html
    assert UNCALIBRATED_BANNER in simulated_html
    assert "SIMULATED" not in real_html
    assert UNCALIBRATED_BANNER not in real_html
    assert "ground truth" not in real_html


def test_html_escapes_user_strings(tmp_path: Path) -> None:
    character, images = sample_character(name="<script>alert(1)</script>")
    character["shots"][0]["params"]["prompt"] = '"><img src=x onerror=alert(2)>'
    character["shots"][1]["params"]["scenario"] = "</h3><script>alert(3)</script>"

    html = write_html(character, images, tmp_path).read_text(encoding="utf-8")

    assert "<script" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html


def test_html_is_self_contained(tmp_path: Path) -> None:
    character, images = sample_character()

    html = write_html(character, images, tmp_path).read_text(encoding="utf-8")

    assert not re.search(r"(src|href)=\"(https?:)?//", html), "no network fetches"
    assert "@import" not in html
    assert "<script" not in html
    assert '<meta name="viewport"' in html


def test_html_summary_line(tmp_path: Path) -> None:
    character, images = sample_character()

    html = write_html(character, images, tmp_path).read_text(encoding="utf-8")

    assert "15 shots · same 11, uncertain 1, different 1, no_face 1 · failed 1" in html
    assert "mean face distance 0.425" in html
    assert "total cost $0.0520" in html


def test_html_has_the_consistency_table_under_the_summary(tmp_path: Path) -> None:
    character, images = sample_character()
    character["shots"][0]["params"]["scenario"] = "<b>close</b>"
    stats = summary(character)

    html = write_html(character, images, tmp_path).read_text(encoding="utf-8")

    summary_at, table_at, shots_at = (
        html.index(marker) for marker in ('class="summary"', '<table class="stats">', "<h2>Shots")
    )
    assert summary_at < table_at < shots_at
    assert "<h2>Consistency by scenario</h2>" in html
    assert (
        "".join(f'<th scope="col">{header}</th>' for header in STATS_HEADERS).replace('"same"', "&#34;same&#34;")
        in html
    )
    assert "face distance (lower = more alike)" in html
    assert "the share of scored shots judged &#34;same&#34;" in html
    overall = stats["face_distance_stats"]
    cells = ["14 of 15", mean_ci(overall) + " (13 faces)", f"{overall.std:.3f}", *pass_cells(overall)]
    assert '<th scope="row">all shots</th>' + "".join(f"<td>{cell}</td>" for cell in cells) in html
    action = stats["scenario_stats"]["action"]
    cells = ["3", mean_ci(action), f"{action.std:.3f}", *pass_cells(action)]
    assert '<th scope="row">action</th>' + "".join(f"<td>{cell}</td>" for cell in cells) in html
    assert '<th scope="row">&lt;b&gt;close&lt;/b&gt;</th>' in html


def test_html_refuses_image_bytes_that_do_not_match_their_hash(tmp_path: Path) -> None:
    character, images = sample_character()
    first = next(iter(images))
    images[first] = b"something else"

    with pytest.raises(ValueError, match="do not hash"):
        write_html(character, images, tmp_path)


def test_html_ignores_image_refs_that_are_not_safe_file_names(tmp_path: Path) -> None:
    character, images = sample_character()
    character["references"][0]["sha256"] = "../../etc/passwd"
    images["../../etc/passwd"] = b"x"

    html = write_html(character, images, tmp_path / "r").read_text(encoding="utf-8")

    assert "image not included" in html
    assert not (tmp_path / "etc").exists()


# --- scoring-2 scores: basis, reason, scorer key, CLIP-T ------------------------------------------

SCORER_KEY = "scoring-2-0123456789ab"


def scoring_2_score(verdict: Verdict = "same") -> dict[str, Any]:
    """A score as the scoring service makes it now, dumped to JSON like the gateway serves it."""
    return ShotScore(
        verdict=verdict,
        basis="face",
        reason="face distance 0.310 (the closest of 2 faces) to the nearest reference is under 0.60: same",
        face=FaceScore(
            faces_found=3,
            candidates=2,
            notes=["several_candidates", "upsampled"],
            references_with_face=2,
            distance=0.31,
            mean_distance=0.42,
            max_distance=0.53,
            centroid_distance=0.35,
            same_below=0.6,
            uncertain_below=0.65,
            model="dlib_resnet_v1",
        ),
        clip=ClipScore(image_similarity=0.81, text_similarity=0.27, calibrated=False, model="ViT-B-32"),
        scorer_version="scoring-2",
        scorer_key=SCORER_KEY,
        calibration_profile="studio-1",
        scoring_ms=40.0,
    ).model_dump(mode="json")


def test_csv_has_the_new_score_columns_filled_from_the_score(tmp_path: Path) -> None:
    character, _ = sample_character()
    character["shots"][0]["score"] = scoring_2_score()

    path = write_csv(character, tmp_path / "results.csv")

    with path.open(newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    new_columns = (
        "face_max_distance",
        "face_centroid_distance",
        "face_candidates",
        "face_notes",
        "calibration_profile",
        "score_basis",
        "score_reason",
        "prompt_similarity",
        "scorer_key",
    )
    assert set(new_columns) <= set(CSV_COLUMNS)
    assert list(rows[0]) == list(CSV_COLUMNS)
    first = rows[0]
    assert {column: first[column] for column in new_columns} == {
        "face_max_distance": "0.53",
        "face_centroid_distance": "0.35",
        "face_candidates": "2",
        "face_notes": "several_candidates upsampled",
        "calibration_profile": "studio-1",
        "score_basis": "face",
        "score_reason": character["shots"][0]["score"]["reason"],
        "prompt_similarity": "0.27",
        "scorer_key": SCORER_KEY,
    }
    assert (first["scorer_version"], first["face_distance"], first["clip_similarity"]) == ("scoring-2", "0.31", "0.81")
    older = rows[1]  # a score stored before scoring-2 has none of them
    assert all(older[column] == "" for column in new_columns)


def test_rows_table_and_stats_notes_show_the_new_figures() -> None:
    character, _ = sample_character()
    character["shots"][0]["score"] = scoring_2_score()

    row = shot_rows(character)[0]
    table = render(results_table(character))
    notes = stats_notes(character)

    assert (row.prompt_similarity, row.scorer_key) == (0.27, SCORER_KEY)
    assert shot_rows(character)[1].scorer_key is None
    assert "0.270" in table
    assert (
        notes[-1] == f"scores by scorer {SCORER_KEY} (calibration profile studio-1); each shot shows its newest score"
    )
    assert SCORER_KEY in render(stats_table(character))


def test_stats_notes_name_every_scorer_key_in_use() -> None:
    character, _ = sample_character()
    character["shots"][0]["score"] = scoring_2_score()
    character["shots"][1]["score"] = {**scoring_2_score(), "scorer_key": "scoring-2-ffffffffffff"}
    character["shots"][1]["score"]["calibration_profile"] = None

    assert stats_notes(character)[-1] == (
        f"scores by scorers {SCORER_KEY} (calibration profile studio-1), "
        "scoring-2-ffffffffffff (thresholds from settings); each shot shows its newest score"
    )
    assert not any("scorer" in note for note in stats_notes(sample_character()[0]))


def test_html_shows_the_reason_for_each_verdict(tmp_path: Path) -> None:
    character, images = sample_character()
    character["shots"][0]["score"] = scoring_2_score()
    character["shots"][0]["score"]["reason"] = "face distance <0.310>: same"

    html = write_html(character, images, tmp_path).read_text(encoding="utf-8")

    assert '<p class="reason">face distance &lt;0.310&gt;: same</p>' in html
    assert html.count('class="reason"') == 1, "older scores have no reason to show"
