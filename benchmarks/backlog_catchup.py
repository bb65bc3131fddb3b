"""Benchmark: a backlog in the topic, then the continuous stream starts (as after an outage, or at `up`).

    PYTHONPATH=. .venv/bin/python -m benchmarks.backlog_catchup --events 10000 --max-events-per-trigger 500

The bundled recording is replayed into a fresh topic as fast as the producer goes until it holds ``--events``; the
producer stops; then `streamrag stream` starts with the given ``STREAMRAG_STREAM_MAX_EVENTS_PER_TRIGGER``. Reported,
from the stream's start: when the first document is in pgvector, and when the last one is (the count then unchanged
for 20 s). Small batches show the backlog's first documents sooner; this says what they cost the whole catch-up.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from sqlalchemy import create_engine

from streamrag_assets.documents.queries import document_count
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.runtime.ingest import ingest_process
from streamrag_assets.runtime.stream import stream_process
from streamrag_assets.runtime.supervisor import migrate_documents
from streamrag_tests.harness import EmbeddedStack, isolated_settings, release, running, scratch_dir

QUIET_S = 20.0


def catch_up(settings, timeout_s: float) -> dict:
    engine = create_engine(settings.app_database_url)
    began = time.monotonic()
    first_s = last_change_s = None
    documents = 0
    try:
        with running(settings, [stream_process(settings)]), engine.connect() as conn:
            while time.monotonic() - began < timeout_s:
                count = document_count(conn)
                conn.rollback()  # a fresh snapshot each poll
                now = time.monotonic() - began
                if count and first_s is None:
                    first_s = now
                    print(f"first documents searchable after {now:.1f} s")
                if count != documents:
                    documents, last_change_s = count, now
                if last_change_s is not None and now - last_change_s > QUIET_S:
                    break
                time.sleep(0.2)
    finally:
        engine.dispose()
    return {
        "documents": documents,
        "first_searchable_s": None if first_s is None else round(first_s, 1),
        "all_searchable_s": None if last_change_s is None else round(last_change_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000, help="Backlog size (at least).")
    parser.add_argument("--max-events-per-trigger", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=900, help="Give up on the catch-up after this long.")
    args = parser.parse_args()
    home = scratch_dir("streamrag-bench-")
    settings = isolated_settings(
        home / ".streamrag",
        ingest_source="recording",
        ingest_rate=0,  # as fast as the producer goes
        stream_max_events_per_trigger=args.max_events_per_trigger,
    )
    stack = EmbeddedStack(settings)
    try:
        stack.start_all()
        migrate_documents(settings)
        with running(settings, [ingest_process(settings)]):
            while kafka_offsets.topic_size(settings.bootstrap_servers, settings.topic) < args.events:
                time.sleep(0.5)
        backlog = kafka_offsets.topic_size(settings.bootstrap_servers, settings.topic)
        print(f"backlog of {backlog:,} events; starting the stream")
        result = {"max_events_per_trigger": args.max_events_per_trigger, "backlog": backlog}
        result |= catch_up(settings, args.timeout) | {"load_avg_end": os.getloadavg()}
        print(json.dumps(result))
    finally:
        stack.stop_all()
        release(home)


if __name__ == "__main__":
    main()
