"""Benchmark: producer throughput from the synthetic SSE source into the embedded broker (issue #3).

    .venv/bin/python -m benchmarks.ingest_throughput --events 60000

Starts SeaweedFS + Tansu on free ports in a temporary directory, a synthetic SSE server serving as fast as it can,
and `streamrag ingest` reading it; reports events/s acknowledged by the broker (from the topic's high watermarks).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import time

import psutil

from streamrag_assets.ingest.sse_server import STREAM_PATH
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.runtime.sse_source import sse_source_process
from streamrag_tests.harness import (
    PROJECT_ROOT,
    VENV_BIN,
    EmbeddedStack,
    clean_env,
    isolated_settings,
    release,
    scratch_dir,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--malformed-fraction", type=float, default=0.01)
    args = parser.parse_args()

    home = scratch_dir("streamrag-bench-")
    settings = isolated_settings(
        home / ".streamrag", ingest_metrics_port=0, ingest_rate=0, ingest_malformed_fraction=args.malformed_fraction
    )
    stack = EmbeddedStack(settings)
    server = sse_source_process(settings, "synthetic", args.events)
    ingest = None
    try:
        for proc in (stack.seaweedfs, stack.kafka):
            stack.start(proc)
        server.start()
        server.wait_ready(30)
        ingest = subprocess.Popen(
            [
                str(VENV_BIN / "streamrag"),
                "ingest",
                "--source",
                "synthetic",
                "--url",
                f"http://127.0.0.1:{settings.source_port}{STREAM_PATH}",
            ],
            env={**clean_env(), **settings.to_env()},
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs = {
            "ingest": ingest.pid,
            "sse-server": server.proc.pid,
            "tansu": stack.kafka.proc.pid,
            "seaweedfs": stack.seaweedfs.proc.pid,
        }
        cpu_before = {name: sum(psutil.Process(pid).cpu_times()[:2]) for name, pid in procs.items()}
        started = first_at = None
        samples = []
        while True:
            size = kafka_offsets.topic_size(settings.bootstrap_servers, settings.topic, wait_for_topic_s=1)
            now = time.monotonic()
            if size and first_at is None:
                first_at, started = now, size
            samples.append((now, size))
            if size >= args.events:
                break
            time.sleep(0.25)
        elapsed = samples[-1][0] - first_at
        rate = (samples[-1][1] - started) / elapsed
        cpu = {
            name: round(sum(psutil.Process(pid).cpu_times()[:2]) - cpu_before[name], 1) for name, pid in procs.items()
        }
        print(
            f"events: {args.events}  elapsed: {elapsed:.2f} s  throughput: {rate:,.0f} events/s "
            f"(acknowledged by the broker, acks=all, {settings.ingest_compression})"
        )
        print(f"load average: {psutil.getloadavg()}  cpu cores: {psutil.cpu_count()}")
        print(f"cpu seconds per process during the run: {cpu}")
    finally:
        if ingest is not None:
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(60)
        server.stop()
        stack.stop_all()
        release(home)


if __name__ == "__main__":
    main()
