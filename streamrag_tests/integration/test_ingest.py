"""Ingest against the real broker and a real local SSE server: kills lose nothing and repeat nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streamrag_assets.ingest.producer import EventProducer
from streamrag_assets.ingest.sources import synthetic_event
from streamrag_assets.ingest.sse_client import SourceEvent
from streamrag_assets.ingest.sse_server import STREAM_PATH
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.runtime.process import ManagedProcess
from streamrag_assets.runtime.sse_source import sse_source_process
from streamrag_tests.harness import PROJECT_ROOT, VENV_BIN, clean_env, free_port

pytestmark = pytest.mark.integration


def _topic_records(settings) -> list:
    """Every record of the topic, read up to the heads (gaps in the offsets are allowed: see `read_range`)."""
    consumer = kafka_offsets.make_consumer(settings.bootstrap_servers)
    try:
        tps = kafka_offsets.topic_partitions(consumer, settings.topic)
        heads = kafka_offsets.high_watermarks(consumer, tps)
        starts = kafka_offsets.beginning_offsets(consumer, tps)
        return [
            record
            for tp in tps
            for record in kafka_offsets.read_range(consumer, tp, starts[tp.partition], heads[tp.partition])
        ]
    finally:
        consumer.close()


def _sse_ids(settings) -> list[int]:
    return [int(dict(r.headers)["sse_id"]) for r in _topic_records(settings)]


def _count(settings) -> int:
    return kafka_offsets.topic_size(settings.bootstrap_servers, settings.topic)


def _wait_for(settings, at_least: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = _count(settings)
        if seen >= at_least:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"topic reached only {seen} of {at_least} records")


@pytest.fixture
def ingest_settings(stack, state_home: Path):
    return stack.settings.model_copy(
        update={
            "home": state_home,
            "topic": f"raw-{uuid.uuid4().hex[:8]}",
            "source_port": free_port(),
            "ingest_metrics_port": 0,
            "sse_read_timeout_s": 5.0,
        }
    )


def _server(settings, source: str, count: int, rate: float, **extra) -> ManagedProcess:
    server = sse_source_process(settings.model_copy(update={"ingest_rate": rate, **extra}), source, count)
    server.start()
    server.wait_ready(30)
    return server


def _ingest(settings, source: str) -> subprocess.Popen:
    url = f"http://127.0.0.1:{settings.source_port}{STREAM_PATH}"
    return subprocess.Popen(
        [str(VENV_BIN / "streamrag"), "ingest", "--source", source, "--url", url],
        env={**clean_env(), **settings.to_env()},
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(settings.state_dir / "ingest-test.log", "ab"),  # noqa: SIM115
    )


def _log_tail(settings, chars: int = 4000) -> str:
    return (settings.state_dir / "ingest-test.log").read_text(errors="replace")[-chars:]


def _stop(producer: subprocess.Popen, settings) -> None:
    """SIGTERM: the producer flushes, saves its position and exits 0 within a minute."""
    producer.send_signal(signal.SIGTERM)
    try:
        code = producer.wait(60)
    except subprocess.TimeoutExpired:
        producer.kill()
        raise AssertionError(f"ingest did not stop within 60 s of SIGTERM:\n{_log_tail(settings)}") from None
    assert code == 0, f"ingest exited {code}:\n{_log_tail(settings)}"


def _kill_with_acks_beyond_the_saved_position(producer: subprocess.Popen, settings, save_every_s: float) -> None:
    """SIGKILL the producer once ≥100 acknowledged events lie beyond its saved position and no save is imminent.

    Killing at a random moment is not enough: a save landing between the last acknowledgement and the kill leaves
    nothing to skip on restart, and the test would pass without exercising the skip.
    """
    position_file = settings.state_dir / "ingest" / "recording.position.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            saved_at = position_file.stat().st_mtime
            saved = sum(json.loads(position_file.read_text())["scan_from"].values())
        except FileNotFoundError:  # not saved yet (the file is replaced atomically: never half-written)
            time.sleep(0.1)
            continue
        # Checked after reading the topic: the next save is still ≥1 s away when the signal goes.
        if _count(settings) - saved >= 100 and time.time() - saved_at < save_every_s - 1.0:
            producer.send_signal(signal.SIGKILL)
            producer.wait(10)
            return
        time.sleep(0.1)
    raise AssertionError(f"never saw 100 acknowledged events beyond a fresh saved position:\n{_log_tail(settings)}")


def test_killing_server_and_producer_loses_and_repeats_nothing(ingest_settings) -> None:
    # Positions saved only every 5 s, and the kill timed so acknowledged events lie beyond the stored position.
    settings, total = ingest_settings.model_copy(update={"ingest_position_interval_s": 5.0}), 3000
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    server = _server(settings, "recording", total, rate=400)
    producer = _ingest(settings, "recording")
    try:
        _wait_for(settings, 700)
        server.kill()  # the SSE server dies mid-stream …
        time.sleep(1.5)
        server.start()  # … and comes back: the client resumes with Last-Event-ID
        server.wait_ready(30)
        _wait_for(settings, 1500)
        _kill_with_acks_beyond_the_saved_position(producer, settings, save_every_s=5.0)
        producer = _ingest(settings, "recording")
        _wait_for(settings, total, timeout_s=120)
        time.sleep(2)  # anything extra (a duplicate) would arrive now
        stopping = time.monotonic()
        server.stop()  # SIGTERM with a client still connected: must not wait for the endless response
        assert time.monotonic() - stopping < 10
    finally:
        _stop(producer, settings)
        server.stop()
    ids = _sse_ids(settings)
    log = (settings.state_dir / "ingest-test.log").read_text()
    assert "already in the topic; they will be skipped" in log, "the restart had acknowledged events to skip"
    assert "reconnecting" in log, "the client reconnected to the restarted server"
    assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates, {total - len(set(ids))} missing"
    assert sorted(ids) == list(range(total))


def test_sigterm_in_a_flood_stops_at_once_and_a_restart_completes_the_topic(ingest_settings) -> None:
    """A backlog read as fast as the source goes (a catch-up with --since, say): the signal lands mid-send."""
    settings, total = ingest_settings, 30_000
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    server = _server(settings, "recording", total, rate=0)
    producer = _ingest(settings, "recording")
    try:
        _wait_for(settings, 5_000)
        stopping = time.monotonic()
        _stop(producer, settings)
        assert time.monotonic() - stopping < 10, "well within the 20 s `up` gives a service to stop"
        producer = _ingest(settings, "recording")
        _wait_for(settings, total, timeout_s=120)
        time.sleep(2)  # anything extra (a duplicate) would arrive now
    finally:
        _stop(producer, settings)
        server.stop()
    ids = _sse_ids(settings)
    assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates, {total - len(set(ids))} missing"
    assert sorted(ids) == list(range(total))


def test_broker_down_for_ten_seconds_loses_nothing(stack, ingest_settings) -> None:
    settings, total = ingest_settings, 4000
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    server = _server(settings, "recording", total, rate=250)
    producer = _ingest(settings, "recording")
    try:
        _wait_for(settings, 500)
        stack.kafka.kill()
        time.sleep(10)
        stack.start(stack.kafka)
        try:
            _wait_for(settings, total, timeout_s=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; ingest log tail:\n{_log_tail(settings)}") from None
        time.sleep(2)
    finally:
        _stop(producer, settings)
        server.stop()
    ids = _sse_ids(settings)
    problems = [
        line
        for line in (settings.state_dir / "ingest-test.log").read_text(errors="replace").splitlines()
        if " ERROR " in line or "retrying" in line
    ]
    assert sorted(ids) == list(range(total)), f"{len(ids)} records, {len(set(ids))} distinct; {problems[:20]}"


def test_a_duplicate_claim_for_an_unwritten_event_is_checked_and_resent(ingest_settings, tmp_path) -> None:
    """Tansu stores a producer's sequence number before the batch: killed in between, it later answers the retry
    with DUPLICATE_SEQUENCE_NUMBER for a batch it never wrote, and kafka-python reports that as success. Reproduced
    here exactly, by rewinding the client's sequence so the broker answers so; the event must still be written once,
    and a genuine duplicate must not be written twice."""
    settings = ingest_settings
    producer = EventProducer(settings, "test", tmp_path / "dead-letter.ndjson")
    producer.resume(None)

    def event(sse_id: str) -> SourceEvent:
        return SourceEvent(id=sse_id, data=synthetic_event(0, seed=3).replace("\n", " "))

    def rewind_sequence() -> None:
        manager = producer._producer._transaction_manager
        for tp in list(manager._sequence_numbers):
            manager.set_sequence_number(tp, manager.sequence_number(tp) - 1)

    try:
        producer.send(event("a"))
        assert producer.flush(30)
        rewind_sequence()
        producer.send(event("b"))  # the broker answers "already written" for b, which it never saw
        assert producer.flush(30), "b was neither confirmed nor re-sent"
        rewind_sequence()
        producer.send(event("b"))  # a true duplicate: found in the topic, not written again
        assert producer.flush(30)
    finally:
        producer.close()
    ids = sorted(dict(r.headers)["sse_id"].decode() for r in _topic_records(settings))
    assert ids == ["a", "b"]


def test_malformed_lines_and_canaries_reach_the_topic_unchanged(ingest_settings) -> None:
    settings, total, fraction = ingest_settings, 1500, 0.2
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    server = _server(settings, "synthetic", total, rate=0, ingest_malformed_fraction=fraction, ingest_seed=7)
    producer = _ingest(settings, "synthetic")
    try:
        _wait_for(settings, total)
    finally:
        _stop(producer, settings)
        server.stop()

    expected = {seq: synthetic_event(seq, seed=7, malformed_fraction=fraction) for seq in range(total)}
    by_id = {int(dict(r.headers)["sse_id"]): r for r in _topic_records(settings)}
    assert sorted(by_id) == list(range(total))

    def is_malformed(text: str) -> bool:
        try:
            value = json.loads(text)
        except ValueError:
            return True
        return (
            not isinstance(value, dict)
            or not isinstance(value.get("meta"), dict)
            or not isinstance(value.get("type"), str)
        )

    malformed = [seq for seq, text in expected.items() if is_malformed(text)]
    canaries = [
        seq
        for seq, text in expected.items()
        if not is_malformed(text) and json.loads(text)["meta"]["domain"] == "canary"
    ]
    assert len(malformed) > 200 and canaries, "the synthetic stream has both kinds"
    for seq in malformed:
        assert by_id[seq].value == expected[seq].encode(), "malformed lines are kept byte for byte"
        assert by_id[seq].key is None or b":" in by_id[seq].key
    for seq in canaries:
        assert json.loads(by_id[seq].value)["meta"]["domain"] == "canary"
    for record in by_id.values():
        headers = dict(record.headers)
        assert int(headers["ingested_at"]) > 1_700_000_000_000


@pytest.fixture(scope="module")
def direct_producer(stack, tmp_path_factory):
    settings = stack.settings.model_copy(
        update={"topic": f"prop-{uuid.uuid4().hex[:8]}", "home": tmp_path_factory.mktemp("prop")}
    )
    producer = EventProducer(settings, "property", settings.state_dir / "dead.ndjson")
    producer.resume(None)
    yield producer
    producer.close()


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq=st.integers(min_value=0, max_value=10**9),
    seed=st.integers(min_value=0, max_value=10**6),
    fraction=st.floats(min_value=0, max_value=1),
    noise=st.one_of(st.none(), st.text(max_size=300)),
)
def test_producer_accepts_every_line_the_synthetic_source_can_emit(direct_producer, seq, seed, fraction, noise):
    line = synthetic_event(seq, seed=seed, malformed_fraction=fraction) if noise is None else noise
    direct_producer.send(SourceEvent(id=f"{seed}-{seq}", data=line))
    assert direct_producer.flush(timeout_s=30), "every line is acknowledged by the broker"
