"""A bounded run asks the continuous query to pause through the checkpoint directory: the request is visible while
its requester lives, the run gets the checkpoints once the query lets go, and a requester that dies asks nothing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import (
    QueryAlreadyRunning,
    checkpoint_lock,
    checkpoints_for_run,
    pause_request,
    query_running,
)


def _hold_request_forever(settings: Settings, ready) -> None:
    with checkpoints_for_run(settings, "a run that dies", wait_s=600):
        ready.set()
        time.sleep(600)


def test_the_query_pauses_for_a_run_and_resumes_after_it(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    assert pause_request(settings) is None
    events: list[str] = []

    def continuous_query() -> None:  # holds the checkpoints until asked, as `streamrag stream` does
        with checkpoint_lock(settings):
            while (request := pause_request(settings)) is None:
                time.sleep(0.05)
            events.append(f"paused for {request.who}")
        while pause_request(settings) is not None:
            time.sleep(0.05)
        with checkpoint_lock(settings):
            events.append("resumed")

    query = threading.Thread(target=continuous_query)
    query.start()
    time.sleep(0.2)
    said: list[str] = []
    with checkpoints_for_run(settings, "Dagster run abc of rebuild_from_bronze_job", progress=said.append):
        assert events == ["paused for Dagster run abc of rebuild_from_bronze_job"]
        assert query_running(settings), "the run holds the checkpoints"
        assert pause_request(settings).who == "Dagster run abc of rebuild_from_bronze_job"
    query.join(10)
    assert events[-1] == "resumed" and pause_request(settings) is None
    assert said and "pause" in said[0]


def test_a_query_that_does_not_pause_fails_the_run_with_a_clear_error(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    with (
        checkpoint_lock(settings),
        pytest.raises(QueryAlreadyRunning, match="did not pause within 1 s"),
        checkpoints_for_run(settings, "a reprocess", wait_s=1),
    ):
        pytest.fail("the run must not start while the query holds the checkpoints")
    assert pause_request(settings) is None, "the failed run's request is withdrawn"


def test_a_requester_killed_mid_run_leaves_no_request(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    requester = context.Process(target=_hold_request_forever, args=(settings, ready))
    requester.start()
    assert ready.wait(10)
    assert pause_request(settings).who == "a run that dies"
    os.kill(requester.pid, signal.SIGKILL)
    requester.join(10)
    assert pause_request(settings) is None, "the kernel released the request with its holder"
    assert not query_running(settings)
    with checkpoints_for_run(settings, "the next run", wait_s=1):  # and the next run is not held up by the file
        assert pause_request(settings).who == "the next run"
