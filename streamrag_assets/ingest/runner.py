"""The ingest loop: SSE source -> Kafka, resuming exactly where the last acknowledged event left off."""

from __future__ import annotations

import logging
import threading
import time

from streamrag_assets.ingest.position import PositionStore
from streamrag_assets.ingest.producer import EventProducer
from streamrag_assets.ingest.sse_client import SSEClient
from streamrag_assets.metrics import INGEST_EVENTS_RECEIVED, INGEST_EVENTS_SKIPPED_DUPLICATE
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 10.0

UNREACHABLE_HINT = (
    "Without internet access, ingest the bundled recording instead: `streamrag ingest --source recording` "
    "(or STREAMRAG_INGEST_SOURCE=recording for `streamrag up`)."
)


def run_ingest(
    settings: Settings,
    source: str,
    url: str,
    since: str | None = None,
    stop: threading.Event | None = None,
    progress_every_s: float = 10.0,
) -> None:
    state = settings.state_dir / "ingest"
    store = PositionStore(state / f"{source}.position.json")
    producer = EventProducer(settings, source, state / f"{source}.dead-letter.ndjson")
    position = store.load()
    existing = producer.resume(position)
    client = SSEClient(
        url,
        settings.user_agent,
        source=source,
        read_timeout_s=settings.sse_read_timeout_s,
        hint_when_unreachable=UNREACHABLE_HINT if source == "wikimedia" else "",
    )
    resume_id = position.last_event_id if position else None
    log.info(
        "ingesting %s from %s into %s (%s)",
        source,
        url,
        settings.topic,
        f"resuming after id {resume_id}" if resume_id else f"since {since}" if since else "from now",
    )
    received = skipped = 0
    received_total = INGEST_EVENTS_RECEIVED.labels(source)
    last_progress = time.monotonic()
    # Re-sending failed deliveries and saving the position must not wait for the next event: a quiet stream (or the
    # end of a replay) would otherwise leave failures unsent and acknowledged events unrecorded.
    housekeeping_stop = threading.Event()
    housekeeping = threading.Thread(
        target=_housekeep,
        args=(producer, store, settings.ingest_position_interval_s, housekeeping_stop),
        name="ingest-housekeeping",
        daemon=True,
    )
    housekeeping.start()
    try:
        for event in client.events(resume_id, since, stop):
            received += 1
            received_total.inc()
            where = existing.pop(event.id, None) if existing and event.id is not None else None
            if where is not None:
                producer.mark_existing(event, *where)
                skipped += 1
                INGEST_EVENTS_SKIPPED_DUPLICATE.labels(source).inc()
            else:
                producer.send(event)
            now = time.monotonic()
            if now - last_progress >= progress_every_s:
                log.info(
                    "%s: %d received, %d awaiting ack, %d skipped as already in the topic",
                    source,
                    received,
                    producer.tracker.outstanding,
                    skipped,
                )
                last_progress = now
    finally:
        housekeeping_stop.set()
        housekeeping.join(timeout=10)
        # Bounded so that the process exits within the supervisor's stop timeout (20 s) even with a full send
        # buffer (a backlog read as fast as the source goes): what is not acknowledged by then is not in the saved
        # position, so the source sends it again on restart.
        flushed = producer.flush(timeout_s=SHUTDOWN_FLUSH_S)
        if not flushed:
            log.warning(
                "%d event(s) not acknowledged at shutdown; the source will send them again on restart",
                producer.tracker.outstanding,
            )
        store.save(producer.tracker.snapshot())
        producer.close(wait=flushed)
        log.info("%s: stopped after %d events; position saved", source, received)


def _housekeep(producer: EventProducer, store: PositionStore, save_every_s: float, stop: threading.Event) -> None:
    last_save = time.monotonic()
    while not stop.wait(0.2):
        producer.replace_if_stalled()
        producer.verify_unconfirmed()
        resent = producer.resend_failed()
        if resent:
            log.info("re-sent %d event(s) whose delivery failed", resent)
        if time.monotonic() - last_save >= save_every_s:
            store.save(producer.tracker.snapshot())
            last_save = time.monotonic()
