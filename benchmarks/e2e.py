"""Benchmark: an edit sent → searchable, black-box, for the whole platform as `streamrag up` runs it (issue 25).

    make bench-e2e                                   # 20 and 50 events/s, 10 minutes each
    .venv/bin/python -m benchmarks.e2e --rates 50 --minutes 3

For each rate: a local SSE server (this process) serves the bundled recording at that rate, with a uniquely
searchable marker edit every ``--marker-every`` seconds; `streamrag up` starts on fresh state and reads it as it
reads Wikimedia (`STREAMRAG_WIKIMEDIA_URL`); each marker is looked for with keyword `/search` until a hit carries its
token. Reported per minute since `up` started: markers, p50/p95/p99 of sent → searchable, markers never found;
the second from which the platform is real-time (the first whole minute with p50 ≤ 2 s); CPU seconds per service per
minute; PSS per service at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import uvicorn

from benchmarks.cpu import cpu_kind
from benchmarks.stack_footprint import _read_progress, _tree, services, usage
from streamrag_assets.ingest.sources import recorded_event, recorded_events
from streamrag_assets.ingest.sse_server import STREAM_PATH, create_app
from streamrag_tests.harness import free_port, isolated_settings, release, scratch_dir

REAL_TIME_P50_S = 2.0
# A marker sent this recently and not found yet is on its way, not missing: each minute's progress line is printed at
# the minute's end, when the markers of its last second are still in the pipeline (session 17 read those as misses).
IN_FLIGHT_S = 10.0

RECORDED = len(recorded_events())  # events in the bundled recording, sent in loops


class Markers:
    """The marker edits: made by the SSE server's event factory (so `sent` is when the event left), found by the
    poller."""

    def __init__(self, rate: float, every_s: float) -> None:
        self.stride = max(1, round(rate * every_s))
        self.run = uuid.uuid4().hex[:8]
        self.sent: dict[str, float] = {}
        self.found: dict[str, float] = {}
        self.stamps: dict[str, tuple[float, float]] = {}  # token -> (ingested_at, indexed_at) of the hit
        self.searches: list[tuple[float, float]] = []  # (when, seconds) of each answered /search
        self.lock = threading.Lock()

    def snapshot(self) -> Markers:
        """A copy to read while the SSE server and the poller go on adding (iterating the live dicts raised
        "dictionary changed size during iteration" 101 minutes into a soak), taken under the lock they write under:
        copied one by one without it, a marker found between the copies of `found` and `stamps` was in the one and
        not the other (a KeyError ended a soak after 33 minutes)."""
        copy = Markers.__new__(Markers)
        copy.stride, copy.run, copy.lock = self.stride, self.run, self.lock
        with self.lock:
            copy.sent, copy.found, copy.stamps = dict(self.sent), dict(self.found), dict(self.stamps)
        copy.searches = list(self.searches)
        return copy

    def event(self, seq: int) -> str:
        line = recorded_event(seq)
        if seq % self.stride:
            loop = seq // RECORDED
            if not loop:
                return line
            # Each loop of the recording under other user names: the live stream seldom repeats a document's whole
            # text, and a table of the same ~100 texts thousands of times over is no fit to measure vector recall on
            # (HNSW over exact duplicates; pgvector#837).
            event = json.loads(line)
            event["user"] = f"{event.get('user') or 'anonymous'} {loop}"
            return json.dumps(event)
        # One word no recorded edit has, the same each time this event is sent: a client that reconnects gets the
        # events after its Last-Event-ID again, and a marker resent is the same marker (first sending counts).
        token = f"zq{self.run}x{seq}"
        event = json.loads(line)
        event["title"] = f"Benchmark marker {token}"
        event["comment"] = event["parsedcomment"] = f"freshness marker {token}"
        event["id"] = 2**30 + seq
        event.setdefault("meta", {})["id"] = str(uuid.UUID(int=uuid.UUID(self.run * 4).int + seq))
        with self.lock:
            self.sent.setdefault(token, time.time())
        return json.dumps(event)

    def pending(self) -> list[str]:
        with self.lock:
            return [t for t in self.sent if t not in self.found]


def serve(markers: Markers, rate: float, port: int, backlog: int = 0) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(markers.event, rate, backlog=backlog), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


# Pending markers asked for in one keyword /search: its words are OR-ed (`keyword.MAX_TERMS`, 32), and each marker's
# token is in one document only, so the hits hold every one of them that is searchable. With one search per marker,
# a backlog's hundred-odd pending markers kept the poller searching back to back: the API took 15-21 CPU-seconds a
# minute in a 20,000-event catch-up (3.6 once current), CPU the stream's catch-up needed on two cores; no user
# searches like that.
MARKERS_PER_SEARCH = 25


def poll(api_url: str, markers: Markers, stop: threading.Event) -> None:
    """Every 0.1 s, a keyword `/search` for each group of pending markers; a marker is found when a hit's title
    carries its token."""
    with httpx.Client(base_url=api_url, timeout=5) as client:
        while not stop.is_set():
            pending = markers.pending()
            for start in range(0, len(pending), MARKERS_PER_SEARCH):
                group = pending[start : start + MARKERS_PER_SEARCH]
                try:
                    asked = time.perf_counter()
                    response = client.post("/search", json={"query": " ".join(group), "mode": "keyword", "top_k": 50})
                except httpx.HTTPError:
                    break  # the API is not up yet
                if response.status_code != 200:
                    continue
                markers.searches.append((time.time(), time.perf_counter() - asked))
                for token, hit in _hits(response, group).items():
                    with markers.lock:
                        markers.found[token] = time.time()
                        if hit.get("ingested_at"):
                            markers.stamps[token] = (_epoch(hit["ingested_at"]), _epoch(hit["indexed_at"]))
            stop.wait(0.1)


def _hits(response: httpx.Response, tokens: list[str]) -> dict[str, dict]:
    """The hit whose title carries each of ``tokens`` that one does."""
    found = {}
    for hit in response.json()["hits"]:
        for token in tokens:
            if token in (hit["title"] or ""):
                found.setdefault(token, hit)
    return found


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def per_minute(markers: Markers, began_wall: float, minutes: int) -> list[dict]:
    """Per minute of sending: markers, how many are not found yet (``missing``; those sent in the last
    `IN_FLIGHT_S` are ``in_flight`` instead, not yet due), and p50/p95/p99 of sent -> searchable."""
    rows = []
    now = time.time()
    markers = markers.snapshot()
    for minute in range(minutes):
        start, end = began_wall + 60 * minute, began_wall + 60 * (minute + 1)
        sent = [t for t, at in markers.sent.items() if start <= at < end]
        delays = [markers.found[t] - markers.sent[t] for t in sent if t in markers.found]
        unfound = [t for t in sent if t not in markers.found]
        in_flight = sum(1 for t in unfound if now - markers.sent[t] < IN_FLIGHT_S)
        row: dict = {"minute": minute + 1, "markers": len(sent), "missing": len(unfound) - in_flight}
        if in_flight:
            row["in_flight"] = in_flight
        if delays:
            row |= {
                "p50_s": round(statistics.median(delays), 2),
                "p95_s": round(_percentile(delays, 0.95), 2),
                "p99_s": round(_percentile(delays, 0.99), 2),
            }
            # Where the time went, p50 of each stage: the SSE server's send -> ingest's receipt (its `ingested_at`
            # header), -> the document row's insert (linger, broker, Spark trigger, refine, embed), -> the first
            # /search hit (the commit, the keyword index's refresh, this poller's interval).
            stamped = [t for t in sent if t in markers.stamps and t in markers.found]
            if stamped:
                row["stages_p50_s"] = {
                    "to_ingest": _median(markers.stamps[t][0] - markers.sent[t] for t in stamped),
                    "to_index_row": _median(markers.stamps[t][1] - markers.stamps[t][0] for t in stamped),
                    "to_search": _median(markers.found[t] - markers.stamps[t][1] for t in stamped),
                }
        rows.append(row)
    return rows


def _median(values) -> float:
    return round(statistics.median(list(values)), 3)


def _platform(settings, up_pid: int) -> dict[str, list[psutil.Process]]:
    """Each service's processes, and the supervisor (`streamrag up`) on its own: all of it is what a user runs."""
    processes = {name: _tree(pid) for name, pid in services(settings.state_dir).items()}
    with contextlib.suppress(psutil.NoSuchProcess):
        processes["supervisor"] = [psutil.Process(up_pid)]
    return processes


def disk_mib(state_dir: Path) -> dict[str, float]:
    """MiB on disk per top-level folder of the state directory (postgres, delta, s3 = the broker's objects, ...)."""
    out = {}
    for folder in sorted(p for p in state_dir.iterdir() if p.is_dir()):
        total = 0
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_blocks * 512
        out[folder.name] = round(total / 2**20, 1)
    return out


def window(markers: Markers, since: float, until: float) -> dict:
    """Sent -> searchable of the markers sent in [since, until), and the /search calls' own latency in it."""
    markers = markers.snapshot()
    delays = [markers.found[t] - at for t, at in markers.sent.items() if since <= at < until and t in markers.found]
    searches = [s for when, s in markers.searches if since <= when < until]
    out: dict = {}
    if delays:
        out |= {"p50_s": _median(delays), "p95_s": round(_percentile(delays, 0.95), 3)}
    if searches:
        out |= {
            "search_p50_ms": round(1000 * statistics.median(searches), 1),
            "search_p95_ms": round(1000 * _percentile(searches, 0.95), 1),
            "searches_per_s": round(len(searches) / (until - since), 1),
        }
    return out


def run_rate(
    rate: float, minutes: int, marker_every: float, keep: bool, backlog: int = 0, sample_every: int = 0
) -> dict:
    home = scratch_dir(f"streamrag-e2e-{int(rate)}-")
    port = free_port()
    settings = isolated_settings(
        home / ".streamrag", ingest_source="wikimedia", wikimedia_url=f"http://127.0.0.1:{port}{STREAM_PATH}"
    )
    markers = Markers(rate, marker_every)
    server = serve(markers, rate, port, backlog)
    lines: list[str] = []
    events: dict[str, float] = {}
    cpu_by_minute: list[dict[str, float]] = []
    result: dict = {"rate": rate, "backlog": backlog, "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    samples: list[dict] = []
    began, began_wall = time.monotonic(), time.time()
    up = subprocess.Popen(
        [str(Path(sys.executable).with_name("streamrag")), "up"],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=_read_progress, args=(up.stdout, began, events, lines), daemon=True).start()
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(settings.api_url, markers, stop), daemon=True)
    poller.start()
    try:
        last: dict[str, float] = {}
        for minute in range(minutes):
            time.sleep(max(0.0, began + 60 * (minute + 1) - time.monotonic()))
            now = {name: usage(procs)["cpu_s"] for name, procs in _platform(settings, up.pid).items()}
            cpu_by_minute.append({name: round(cpu - last.get(name, 0.0), 1) for name, cpu in sorted(now.items())})
            last = now
            print(f"[{rate:g}/s] minute {minute + 1}: {per_minute(markers, began_wall, minute + 1)[-1]}", flush=True)
            if sample_every and (minute + 1) % sample_every == 0:  # the soak's trend: every `sample_every` minutes
                since = began_wall + 60 * (minute + 1 - sample_every)
                pss = {name: round(usage(procs)["pss_mib"]) for name, procs in _platform(settings, up.pid).items()}
                samples.append(
                    {"minute": minute + 1}
                    | window(markers, since, since + 60 * sample_every)
                    | {"pss_mib": pss, "pss_mib_total": sum(pss.values()), "disk_mib": disk_mib(settings.state_dir)}
                )
                print(f"[{rate:g}/s] sample: {samples[-1]}", flush=True)
        time.sleep(5)  # the last minute's markers get a few seconds more
        result["pss_mib"] = {
            name: round(usage(procs)["pss_mib"]) for name, procs in sorted(_platform(settings, up.pid).items())
        }
        result["pss_mib_total"] = sum(result["pss_mib"].values())
    finally:
        stop.set()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()
        server.should_exit = True
        release(home, keep=keep)
    rows = per_minute(markers, began_wall, minutes)
    searched = [when for when, _ in markers.snapshot().searches]
    for row, cpu in zip(rows, cpu_by_minute, strict=True):
        row["cpu_s"] = cpu
        start = began_wall + 60 * (row["minute"] - 1)
        row["searches"] = sum(1 for when in searched if start <= when < start + 60)  # the poller's /search calls
    result["minutes"] = rows
    if samples:
        result["samples"] = samples
    # Markers sent within the run's minutes that no /search ever returned, with when they were sent (seconds since
    # `up` started): to look for them in the kept state (`--keep-state`).
    end = began_wall + 60 * minutes
    markers = markers.snapshot()
    result["never_found"] = {
        t: round(at - began_wall, 1) for t, at in markers.sent.items() if at < end and t not in markers.found
    }
    result["up_s"] = events.get("up_s")
    real_time = next((r["minute"] for r in rows if r.get("p50_s", 1e9) <= REAL_TIME_P50_S and not r["missing"]), None)
    result["real_time_from_s"] = None if real_time is None else 60 * (real_time - 1)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[20, 50], help="Events/s, one run each.")
    parser.add_argument("--minutes", type=int, default=10, help="Minutes per rate, from `up`'s start.")
    parser.add_argument("--marker-every", type=float, default=2.0, help="Seconds between marker edits.")
    parser.add_argument("--keep-state", action="store_true", help="Keep each run's state directory (logs, data).")
    parser.add_argument(
        "--backlog", type=int, default=0, help="Events served at once before the paced ones (to age the tables)."
    )
    parser.add_argument(
        "--sample-every",
        type=int,
        default=0,
        help="Every this many minutes also record PSS per service, disk per state folder, and sent -> searchable "
        "and /search latency over the window (0: PSS at the end only).",
    )
    args = parser.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}  {cpu_kind()}")
    for rate in args.rates:
        result = run_rate(rate, args.minutes, args.marker_every, args.keep_state, args.backlog, args.sample_every)
        print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
