"""Chaos run: `streamrag up` on the recording source while every process of the platform is SIGKILLed in turn and one is
frozen with SIGSTOP; after each fault, how long until the supervisor has it up again, and whether anything was lost
or doubled by then (every record of the topic in Bronze once; every event in Silver or quarantine once; every Gold
document in pgvector once).

    PYTHONPATH=. .venv/bin/python -m benchmarks.chaos            # make chaos: 50 events/s, ~12 minutes
    PYTHONPATH=. .venv/bin/python -m benchmarks.chaos --events 3000 --stop-seconds 40

The SSE source is ingest's child (it starts it again); the others are `up`'s children, started again by the
supervisor. A process is killed alone (its leader), as the kernel's OOM killer or a crash would, not its group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from streamrag_assets.documents.queries import stored_doc_ids
from streamrag_assets.ingest.sources import recorded_event
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.refine import Rejected, is_canary, parse_event
from streamrag_tests.harness import isolated_settings, release, scratch_dir

# The order of the faults: the source first, then each stage downstream, then what serves and orchestrates.
# "a+b" kills a and b at once (each one's recovery is still timed on its own).
KILL_ORDER = (
    "recording-source",
    "ingest",
    "kafka",
    "seaweedfs",
    "stream",
    "postgres",
    "api",
    "dagster-code",
    "dagster-daemon",
    "dagster-webserver",
)


@dataclass
class Fault:
    process: str
    signal: str
    recover_s: float | None = None  # from the fault to the supervisor's "up" (the SSE source: its /health)
    caught_up_s: float | None = None  # from the fault to topic = Bronze and Gold = pgvector again
    flowing_s: float | None = None  # from the fault to the first event ingested after it being in pgvector
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    lost: int = 0
    duplicates: int = 0
    detail: dict = field(default_factory=dict)


@dataclass
class Reconciliation:
    topic_records: int
    bronze_missing: int  # topic offsets not in Bronze
    bronze_duplicates: int
    events_lost: int  # valid topic events in neither Silver nor (as a repeat) dropped
    silver_duplicates: int
    index_missing: int  # Gold documents not in pgvector
    index_extra: int  # pgvector rows with no Gold document

    @property
    def complete(self) -> bool:
        return not (self.bronze_missing or self.events_lost or self.index_missing or self.index_extra)


def reconcile(settings: Settings, known: dict[tuple[int, int], str | None], refresh: bool = True) -> Reconciliation:
    """Topic -> Bronze -> Silver/quarantine -> Gold -> pgvector for the records in ``known`` (each offset's event id;
    None: not a valid event). ``refresh`` first reads the records the topic gained since (each record is read and
    parsed once); without it the same records are checked again, a fixed target while events keep arriving."""
    if refresh:
        read_new_records(settings, known)
    # Downstream first: a document indexed after Gold was read would otherwise look like one with no Gold row.
    engine = create_engine(settings.app_database_url)
    try:
        with engine.connect() as conn:
            indexed = stored_doc_ids(conn)
    finally:
        engine.dispose()
    delta = DeltaTables(settings.state_dir / "delta")
    gold = delta.read("gold", ["doc_id", "op", "partition", "offset"]).to_pylist()
    silver_ids = delta.read("silver", ["event_id"])["event_id"].to_pylist()
    bronze = delta.read("bronze", ["partition", "offset"])
    positions = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    gold_ids = {d["doc_id"] for d in gold if d["op"] != "delete"}
    due = {d["doc_id"] for d in gold if d["op"] != "delete" and (d["partition"], d["offset"]) in known}
    expected_events = {event_id for event_id in known.values() if event_id is not None}
    return Reconciliation(
        topic_records=len(known),
        bronze_missing=len(set(known) - set(positions)),
        bronze_duplicates=len(positions) - len(set(positions)),
        events_lost=len(expected_events - set(silver_ids)),
        silver_duplicates=len(silver_ids) - len(set(silver_ids)),
        index_missing=len(due - indexed),
        index_extra=len(indexed - gold_ids),
    )


def read_new_records(settings: Settings, known: dict[tuple[int, int], str | None]) -> None:
    """Add the topic's records beyond those in ``known``, up to the heads now, with their event ids."""
    consumer = kafka_offsets.make_consumer(settings.bootstrap_servers)
    try:
        tps = kafka_offsets.topic_partitions(consumer, settings.topic)
        heads = kafka_offsets.high_watermarks(consumer, tps)
        for tp in tps:
            start = max([o + 1 for p, o in known if p == tp.partition], default=0)
            start = max(start, kafka_offsets.beginning_offsets(consumer, [tp])[tp.partition])
            for record in kafka_offsets.read_range(consumer, tp, start, heads[tp.partition], idle_s=5):
                known[(record.partition, record.offset)] = _event_id(record.value)
    finally:
        consumer.close()


def first_indexed_after(settings: Settings, moment: datetime) -> datetime | None:
    """When the first document ingested after ``moment`` was written to pgvector: SSE -> pgvector flows again."""
    engine = create_engine(settings.app_database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT min(indexed_at) FROM documents WHERE ingested_at > :moment"), {"moment": moment}
            ).scalar()
    finally:
        engine.dispose()


def flowing_again(settings: Settings, moment: datetime, timeout_s: float) -> float | None:
    """Seconds from ``moment`` until an event ingested after it was in pgvector (None: not within ``timeout_s``)."""
    if wait_until(lambda: first_indexed_after(settings, moment) is not None, timeout_s, 1) is None:
        return None
    first = first_indexed_after(settings, moment)
    return round((first - moment).total_seconds(), 1) if first else None


def _event_id(value: bytes | None) -> str | None:
    try:
        event = parse_event(value)
    except Rejected:
        return None
    return None if is_canary(event) else event["event_id"]


def supervisor_state(settings: Settings) -> dict[str, dict]:
    try:
        return json.loads((settings.state_dir / "run" / "supervisor.json").read_text()).get("services", {})
    except (FileNotFoundError, ValueError):
        return {}


def pid_of(settings: Settings, process: str) -> int:
    return int((settings.state_dir / "run" / f"{process}.pid").read_text())


def wait_until(condition, timeout_s: float, every_s: float = 0.5) -> float | None:
    """Seconds until ``condition()`` held, or None if it did not within ``timeout_s``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        try:
            if condition():
                return time.monotonic() - began
        except Exception:  # a service mid-restart: not yet
            pass
        time.sleep(every_s)
    return None


def source_answers(settings: Settings) -> bool:
    return httpx.get(f"http://127.0.0.1:{settings.source_port}/health", timeout=1).status_code == 200


def fault(
    settings: Settings, processes: list[str], sig: signal.Signals, hold_s: float, recover_timeout_s: float
) -> list[Fault]:
    """One fault: signal the processes at once, (SIGSTOP: hold them), and time each one's recovery."""
    waiting = []
    for process in processes:
        before = supervisor_state(settings).get(process, {}).get("restarts", 0)
        old_pid = pid_of(settings, process)
        os.kill(old_pid, sig)
        waiting.append((Fault(process, sig.name), old_pid, before, time.monotonic()))
    for result, old_pid, before, began in waiting:
        recovered = partial(_recovered, settings, result.process, old_pid, before)
        if sig == signal.SIGSTOP and hold_s:
            # Frozen for hold_s unless the supervisor finds it hung first (it kills it; SIGCONT then finds nothing).
            wait_until(recovered, hold_s - (time.monotonic() - began))
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGCONT)
        waited = wait_until(recovered, recover_timeout_s - (time.monotonic() - began))
        result.recover_s = round(time.monotonic() - began, 1) if waited is not None else None
        result.detail["restarts_before"] = before
        result.detail["state_after"] = supervisor_state(settings).get(result.process, {})
    return [result for result, *_ in waiting]


def _recovered(settings: Settings, process: str, old_pid: int, restarts_before: int) -> bool:
    if process == "recording-source":  # ingest's child: back when a new one answers
        return pid_of(settings, process) != old_pid and source_answers(settings)
    state = supervisor_state(settings).get(process, {})
    return state.get("restarts", 0) > restarts_before and state.get("state") == "up"


def start_up(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRAG_")} | settings.to_env()
    command = [str(Path(sys.executable).with_name("streamrag")), "up"]
    out = open(log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def chaos_settings(home: Path, events: int, rate: float, **overrides: object) -> Settings:
    return isolated_settings(
        home,
        ingest_source="recording",
        ingest_rate=rate,
        ingest_count=events,
        startup_timeout_s=180,
        **overrides,
    )


def run(
    settings: Settings,
    events: int,
    kills: tuple[str, ...] = KILL_ORDER,
    stop_process: str | None = "api",
    stop_seconds: float = 60,
    recover_timeout_s: float = 180,
    settle_s: float = 10,
    progress=print,
) -> dict:
    """Start `up`, apply the faults in turn, then wait for the feed's end and reconcile. Returns the figures."""
    up_log = settings.home.parent / "up.log"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    up = start_up(settings, up_log)
    known: dict[tuple[int, int], str | None] = {}
    faults: list[Fault] = []
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "events": events}
    result["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        up_s = wait_until(lambda: "streamrag is up" in up_log.read_text(errors="replace"), 400, 1)
        assert up_s is not None, f"`up` did not start:\n{up_log.read_text(errors='replace')[-3000:]}"
        result["up_s"] = round(up_s, 1)
        progress(f"up in {up_s:.0f} s")
        time.sleep(settle_s)
        plan = [(p.split("+"), signal.SIGKILL) for p in kills]
        plan += [([stop_process], signal.SIGSTOP)] if stop_process else []
        for processes, sig in plan:
            group = fault(settings, processes, sig, stop_seconds, recover_timeout_s)
            faults += group
            progress(f"{sig.name} {'+'.join(processes)}: back after {[one.recover_s for one in group]} s")
            read_new_records(settings, known)  # what the broker holds now must get through every layer
            caught = wait_until(lambda: reconcile(settings, known, refresh=False).complete, recover_timeout_s, 2)
            now = reconcile(settings, known, refresh=False)
            flowing = flowing_again(settings, group[0].at, recover_timeout_s)
            slowest = max(one.recover_s or 0 for one in group)
            for one in group:
                one.caught_up_s = round(caught + slowest, 1) if caught is not None else None
                one.lost = now.events_lost
                one.duplicates = now.bronze_duplicates + now.silver_duplicates + now.index_extra
                one.detail["reconciliation"] = vars(now)
                one.flowing_s = flowing
            progress(f"  caught up after {group[0].caught_up_s} s: {vars(now)}")
            progress(f"  an event ingested after the fault was searchable {flowing} s after it")
            time.sleep(settle_s)
        # The feed's end: every event of the recording sent, acknowledged, and through every layer.
        expected = {
            json.loads(recorded_event(seq, seed=f"replay-{settings.ingest_seed}"))["meta"]["id"]
            for seq in range(events)
        }

        def all_through() -> bool:
            silver = set(DeltaTables(settings.state_dir / "delta").read("silver", ["event_id"])["event_id"].to_pylist())
            if not expected <= silver:
                return False
            read_new_records(settings, known)  # and the freshness probe's events, which go on arriving
            return reconcile(settings, known, refresh=False).complete

        finished = wait_until(all_through, max(120, events / settings.ingest_rate * 2), 3)
        final = reconcile(settings, known, refresh=False)
        silver = DeltaTables(settings.state_dir / "delta").read("silver", ["event_id"])["event_id"].to_pylist()
        result["final"] = vars(final) | {
            "recorded_events_missing_from_silver": len(expected - set(silver)),
            "finished_after_s": round(finished, 1) if finished is not None else None,
        }
        with httpx.Client(base_url=settings.api_url, timeout=10) as client:
            result["api_search_status"] = client.post("/search", json={"query": "edit"}).status_code
            result["api_health"] = client.get("/health").json()
        result["supervisor"] = supervisor_state(settings)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(180)
        except subprocess.TimeoutExpired:
            up.kill()
        result["faults"] = [vars(f) for f in faults]
        result["seconds"] = round(time.monotonic() - began, 1)
        result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table(result: dict) -> str:
    rows = [
        "| fault | process | recovered (s) | caught up (s) | new event searchable (s) | lost | duplicates |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in result["faults"]:
        cells = [f[k] for k in ("signal", "process", "recover_s", "caught_up_s", "flowing_s", "lost", "duplicates")]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000, help="Events the recording source serves in all.")
    parser.add_argument("--rate", type=float, default=50.0, help="Events/s of the recording source.")
    parser.add_argument("--stop-seconds", type=float, default=60, help="How long the SIGSTOPped service is frozen.")
    parser.add_argument("--stop", default="api", help="The service frozen with SIGSTOP ('' for none).")
    parser.add_argument("--keep-state", action="store_true", help="Keep the state directory (logs, data).")
    args = parser.parse_args()
    home = scratch_dir("streamrag-chaos-")
    settings = chaos_settings(home / ".streamrag", args.events, args.rate)
    try:
        result = run(settings, args.events, stop_process=args.stop or None, stop_seconds=args.stop_seconds)
        print(json.dumps(result, indent=2, default=str), flush=True)
        print(table(result), flush=True)
    finally:
        release(home, keep=args.keep_state)


if __name__ == "__main__":
    main()
