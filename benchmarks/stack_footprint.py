"""Benchmark: the whole embedded platform as `streamrag up` runs it (ARCHITECTURE.md's goals: the first event
searchable within 90 s of `up` on an installed machine; the whole stack within 4 GiB RSS at steady state).

    PYTHONPATH=. .venv/bin/python -m benchmarks.stack_footprint --seconds 300

`streamrag up` runs in a fresh state directory on free ports, on the bundled recording (`STREAMRAG_INGEST_SOURCE=
replay`, 50 events/s, the default rate); everything else is the default configuration. From the command's start:
- each service's start as `up` reports it (its progress lines);
- the first event searchable: `/events/recent` polled every 0.2 s until it lists a document, then that document
  looked up by its title with `/search` (hybrid, the default) until it is among the hits;
- at steady state (after ``--settle`` seconds more), every ``--every`` seconds for ``--seconds``: the resident memory
  of each service's process tree (RSS, and PSS, which shares pages that several processes map among them, so that
  the total does not count a library twice) and the CPU each used over the window;
- `up` stopped with SIGTERM (what Ctrl-C and `streamrag down` do): seconds until it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text

from streamrag_tests.harness import isolated_settings, release, scratch_dir

READY_LINE = re.compile(r"\[streamrag\] (\S+) ready at .* \(([\d.]+) s\)")


def _read_progress(stream, began: float, events: dict[str, float], lines: list[str]) -> None:
    for raw in stream:
        line = raw.rstrip()
        lines.append(line)
        match = READY_LINE.search(line)
        if match:
            events[f"{match.group(1)}_ready_s"] = round(time.monotonic() - began, 1)
        elif line.startswith("streamrag is up"):
            events["up_s"] = round(time.monotonic() - began, 1)


def first_searchable(api_url: str, began: float, timeout_s: float) -> dict:
    """Seconds from `up` to the first indexed document, and to that document found by /search."""
    out: dict = {}
    failed: Counter[str] = Counter()
    deadline = began + timeout_s
    with httpx.Client(base_url=api_url, timeout=5) as client:
        document = None
        while document is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no document indexed within {timeout_s:.0f} s")
            try:
                response = client.get("/events/recent", params={"limit": 1})
                if response.status_code == 200:
                    document = next(iter(response.json()["events"]), None)
                else:
                    failed[str(response.status_code)] += 1
            except (httpx.HTTPError, ValueError) as exc:
                failed[type(exc).__name__] += 1
            if document is None:
                time.sleep(0.2)
        out["failed_polls"] = dict(failed)
        out["first_indexed_s"] = round(time.monotonic() - began, 1)
        out["first_document"] = {k: document[k] for k in ("doc_id", "title", "wiki", "ingested_at", "indexed_at")}
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{document['doc_id']} not found by /search within {timeout_s:.0f} s")
            response = client.post("/search", json={"query": document["title"] or document["doc_id"], "top_k": 50})
            if response.status_code == 200 and any(h["doc_id"] == document["doc_id"] for h in response.json()["hits"]):
                out["first_searchable_s"] = round(time.monotonic() - began, 1)
                return out
            time.sleep(0.2)


def first_rows(database_url: str, began_wall: float) -> dict:
    """When the first document was ingested and indexed, in seconds from `up`'s start (from the table)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            ingested, indexed = conn.execute(
                text("SELECT min(ingested_at), min(indexed_at) FROM documents WHERE NOT ('probe' = ANY(quality_flags))")
            ).one()
    finally:
        engine.dispose()
    return {
        "first_row_ingested_s": round(ingested.timestamp() - began_wall, 1),
        "first_row_indexed_s": round(indexed.timestamp() - began_wall, 1),
    }


def services(state_dir: Path) -> dict[str, int]:
    """The pid of each service `up` started, from its pid file."""
    pids = {}
    for path in (state_dir / "run").glob("*.pid"):
        if path.stem == "up":  # the supervisor: counted on its own
            continue
        try:
            pids[path.stem] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def usage(processes: list[psutil.Process]) -> dict[str, float]:
    """RSS and PSS in MiB, and CPU seconds so far, of ``processes`` together."""
    rss = pss = cpu = 0.0
    for proc in processes:
        try:
            memory = proc.memory_full_info()
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += memory.rss
        pss += memory.pss
        cpu += times.user + times.system
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "cpu_s": cpu}


def sample(groups: dict[str, int]) -> dict[str, dict[str, float]]:
    """Each service's process tree, as `usage` measures it."""
    return {name: usage(_tree(pid)) for name, pid in groups.items()}


def steady_state(up_pid: int, state_dir: Path, seconds: float, every: float) -> dict:
    """Memory per service over the window (median and maximum), and the CPU each used in it."""
    groups = services(state_dir)
    children = set(groups.values())
    up = psutil.Process(up_pid)
    samples: list[dict[str, dict[str, float]]] = []
    began = time.monotonic()
    while True:
        current = sample(groups)
        current["supervisor"] = usage([up])  # its own process: the services it started count under their names
        current["_other_children"] = sample({str(c.pid): c.pid for c in up.children() if c.pid not in children})
        samples.append(current)
        print(
            json.dumps(
                {
                    "t": round(time.monotonic() - began),
                    "rss_mib": round(sum(v["rss_mib"] for k, v in current.items() if not k.startswith("_"))),
                    "pss_mib": round(sum(v["pss_mib"] for k, v in current.items() if not k.startswith("_"))),
                }
            ),
            flush=True,
        )
        if time.monotonic() - began >= seconds:
            break
        time.sleep(every)
    names = [name for name in samples[0] if not name.startswith("_")]
    per_service = {}
    for name in names:
        rss = [s[name]["rss_mib"] for s in samples if name in s]
        pss = [s[name]["pss_mib"] for s in samples if name in s]
        per_service[name] = {
            "rss_mib_median": round(statistics.median(rss)),
            "rss_mib_max": round(max(rss)),
            "pss_mib_median": round(statistics.median(pss)),
            "cpu_s": round(samples[-1][name]["cpu_s"] - samples[0][name]["cpu_s"], 1),
        }
    totals_rss = [sum(s[n]["rss_mib"] for n in names if n in s) for s in samples]
    totals_pss = [sum(s[n]["pss_mib"] for n in names if n in s) for s in samples]
    others = samples[-1]["_other_children"]
    return {
        "window_s": round(time.monotonic() - began),
        "samples": len(samples),
        "total_rss_mib": {"median": round(statistics.median(totals_rss)), "max": round(max(totals_rss))},
        "total_pss_mib": {"median": round(statistics.median(totals_pss)), "max": round(max(totals_pss))},
        "services": dict(sorted(per_service.items(), key=lambda kv: -kv[1]["pss_mib_median"])),
        "unaccounted_children": others,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="Steady-state window sampled.")
    parser.add_argument("--settle", type=float, default=60, help="Seconds after the first searchable event first.")
    parser.add_argument("--every", type=float, default=10, help="Seconds between samples.")
    parser.add_argument("--timeout", type=float, default=300, help="Give up when nothing is searchable by then.")
    parser.add_argument("--keep-state", action="store_true", help="Keep the state directory (logs, data).")
    args = parser.parse_args()
    home = scratch_dir("streamrag-footprint-")
    settings = isolated_settings(home / ".streamrag", ingest_source="recording")
    env = {**os.environ, **settings.to_env()}
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args)}
    result["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    lines: list[str] = []
    events: dict[str, float] = {}
    command = [str(Path(sys.executable).with_name("streamrag")), "up"]
    began, began_wall = time.monotonic(), time.time()
    up = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=_read_progress, args=(up.stdout, began, events, lines), daemon=True)
    reader.start()
    try:
        result["start"] = first_searchable(settings.api_url, began, args.timeout)
        result["start"] |= events | first_rows(settings.app_database_url, began_wall)
        print(json.dumps(result), flush=True)
        time.sleep(args.settle)
        result["steady_state"] = steady_state(up.pid, settings.state_dir, args.seconds, args.every)
        with httpx.Client(base_url=settings.api_url, timeout=5) as client:
            result["freshness_at_end"] = client.get("/freshness").json()
        result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        stopping = time.monotonic()
        up.send_signal(signal.SIGTERM)
        try:
            result["exit_code"] = up.wait(120)
            result["stop_s"] = round(time.monotonic() - stopping, 1)
        except subprocess.TimeoutExpired:
            up.kill()
            result["exit_code"] = "killed after 120 s"
        reader.join(5)
        result["up_output_tail"] = lines[-8:]
        result["date_end"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(result, indent=2, ensure_ascii=False), flush=True)
        release(home, keep=args.keep_state)


if __name__ == "__main__":
    main()
