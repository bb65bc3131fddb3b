"""The low watermark from the index's partition marks and the topic's heads (`streamrag_api.watermark`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streamrag_api.schemas import Watermark
from streamrag_api.watermark import low_watermark, sentence
from streamrag_assets.documents.progress import PartitionMark, Progress, marks_from_json, merged

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _mark(offset: int, seconds_ago: float) -> PartitionMark:
    return PartitionMark(offset, NOW - timedelta(seconds=seconds_ago), NOW - timedelta(seconds=seconds_ago + 2))


def test_the_oldest_lagging_partition_sets_the_watermark_and_current_ones_do_not() -> None:
    marks = {0: _mark(100, 30), 1: _mark(50, 5), 2: _mark(7, 600)}
    ingested, event_time, lag = low_watermark(marks, {0: 104, 1: 50, 2: 7}, NOW)
    assert (ingested, event_time, lag) == (NOW - timedelta(seconds=30), NOW - timedelta(seconds=32), 4)
    assert low_watermark(marks, {0: 100, 1: 50, 2: 7}, NOW) == (NOW, NOW, 0), "nothing waits: current now"


def test_a_partition_nothing_of_which_is_indexed_leaves_the_watermark_unknown() -> None:
    ingested, event_time, lag = low_watermark({0: _mark(10, 5)}, {0: 10, 1: 3}, NOW)
    assert (ingested, event_time, lag) == (None, None, 3)


def test_without_the_heads_the_marks_bound_it_and_the_lag_is_unknown() -> None:
    assert low_watermark({0: _mark(10, 5), 1: _mark(3, 9)}, None, NOW) == (
        NOW - timedelta(seconds=9),
        NOW - timedelta(seconds=11),
        None,
    )


def test_marks_merge_forward_and_survive_their_json() -> None:
    earlier = {0: _mark(10, 60), 1: _mark(5, 50)}
    later = {0: _mark(20, 10)}
    assert merged(earlier, later) == {0: _mark(20, 10), 1: _mark(5, 50)}
    progress = Progress("s", 3, merged(earlier, later))
    assert marks_from_json(progress.marks_json()) == progress.marks


def test_the_answer_says_it_in_one_sentence() -> None:
    caught_up = Watermark(
        ingested_through=NOW, event_time_through=NOW, lag_events=0, ingested_to_searchable_p95_s=1.0, checked_at=NOW
    )
    assert sentence(caught_up) == "This reflects every edit received up to 2026-12-05 12:00:00 UTC."
    behind = caught_up.model_copy(update={"lag_events": 12})
    assert sentence(behind).endswith("; 12 more are not indexed yet.")
    unknown = caught_up.model_copy(update={"ingested_through": None})
    assert sentence(unknown) == "How current the index is cannot be told right now."
