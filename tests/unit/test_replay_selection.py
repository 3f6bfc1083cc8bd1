"""`likeness replay`'s selection: times, subject filters and what retention has removed (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from infra.bus import group_of, grouped
from infra.cli_replay import Selection, StreamState, parse_moment, retention_warning, subject_matches

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_times_are_iso_8601_or_a_span_back_from_now() -> None:
    assert parse_moment("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_moment("3d", now=NOW) == NOW - timedelta(days=3)
    assert parse_moment("90s", now=NOW) == NOW - timedelta(seconds=90)
    assert parse_moment("2026-11-20T08:30:00") == datetime(2026, 11, 20, 8, 30, tzinfo=UTC)  # no zone: UTC
    assert parse_moment("2026-11-20T08:30:00+02:00") == datetime(2026, 11, 20, 6, 30, tzinfo=UTC)
    with pytest.raises(typer.BadParameter, match="ISO 8601"):
        parse_moment("yesterday")


def test_subject_filters_follow_nats_wildcards() -> None:
    assert subject_matches("likeness.>", "likeness.shot.scored.v1")
    assert subject_matches("likeness.shot.*.v1", "likeness.shot.scored.v1")
    assert not subject_matches("likeness.shot.*", "likeness.shot.scored.v1")
    assert not subject_matches("likeness.>", "likeness")
    assert subject_matches("likeness.shot.scored.v1", "likeness.shot.scored.v1")


def test_the_default_selection_leaves_out_dead_letter_notices() -> None:
    assert not Selection().wants("likeness.message.dead_lettered.v1")
    assert Selection().wants("likeness.shot.scored.v1")
    assert Selection(subject="likeness.message.>").wants("likeness.message.dead_lettered.v1")  # asked for by name


def state(first_seq: int, last_seq: int) -> StreamState:
    return StreamState(
        first_seq=first_seq,
        last_seq=last_seq,
        messages=last_seq - first_seq + 1,
        first_time=NOW - timedelta(days=2),
        max_age_s=7 * 86400,
        max_bytes=-1,
    )


def test_a_selection_reaching_before_the_oldest_kept_event_is_warned_about() -> None:
    warning = retention_warning(Selection(from_seq=5), state(first_seq=101, last_seq=200))
    assert warning is not None
    assert "events before sequence 101 are gone" in warning
    assert "96 of the selected sequences (5..100)" in warning
    assert "max age 7 days, max bytes unlimited" in warning
    assert retention_warning(Selection(from_seq=101), state(first_seq=101, last_seq=200)) is None
    assert retention_warning(Selection(from_seq=1), state(first_seq=1, last_seq=200)) is None  # nothing removed
    by_time = retention_warning(Selection(since=NOW - timedelta(days=3)), state(first_seq=101, last_seq=200))
    assert by_time is not None
    assert "sequences 1..100 are no longer kept" in by_time
    assert retention_warning(Selection(since=NOW - timedelta(days=1)), state(first_seq=101, last_seq=200)) is None


def test_a_consumer_groups_durables_carry_the_group_after_two_hyphens() -> None:
    assert grouped("storage-shot-scored", "rebuild") == "storage-shot-scored--rebuild"
    assert grouped("storage-shot-scored", "") == "storage-shot-scored"
    assert group_of("storage-shot-scored--re-build") == "re-build"
    assert group_of("storage-shot-scored") == ""
