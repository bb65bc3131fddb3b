"""Metrics checked against a real Prometheus (Debian's) scraping the running pipeline on replay data: every PromQL
expression of the dashboards and recording rules returns numbers, the freshness probe measures searchable latency, and
stopping the stream makes the lag and no-progress alerts fire. The rules themselves pass promtool's checks and
unit tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time

import httpx
import pytest
import yaml

from streamrag_assets.runtime.api import api_process
from streamrag_assets.runtime.ingest import ingest_process
from streamrag_assets.runtime.observability import probe_process, prometheus_process, prometheus_url
from streamrag_assets.runtime.stream import stream_process
from streamrag_tests.harness import PROJECT_ROOT, free_port, release, running, separate_platform, stream_triggers

pytestmark = pytest.mark.integration

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"
DASHBOARDS = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=120)


def test_promtool_accepts_the_rules_the_config_and_the_rule_unit_tests() -> None:
    for args in (
        ("check", "rules", *(str(p) for p in sorted((PROMETHEUS / "rules").glob("*.yml")))),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", *(str(p) for p in sorted((PROMETHEUS / "tests").glob("*.yml")))),
    ):
        result = _promtool(*args)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "tests" / "streamrag_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == set(_alerts()), "every alert fires in a unit test"


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "streamrag.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for rule in _rules() if "alert" in rule}


def _dashboard_expressions() -> list[str]:
    return [
        target["expr"]
        for path in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


@pytest.fixture(scope="module")
def observed(stack):
    """ingest (replay, 10 events/s) -> stream -> pgvector -> API, the freshness probe every 3 s, and Prometheus scraping
    them every second, on the shared servers with their own topic, state and database."""
    settings = separate_platform(
        stack,
        "prom",
        ingest_source="recording",
        ingest_rate=10.0,
        source_port=free_port(),
        api_port=free_port(),
        ingest_metrics_port=free_port(),
        stream_metrics_port=free_port(),
        probe_metrics_port=free_port(),
        prometheus_port=free_port(),
        probe_interval_s=3.0,
        dagster_report_interval_s=0,
        stream_trigger_ms=250,
    )
    processes = {
        "ingest": ingest_process(settings),
        "stream": stream_process(settings),
        "api": api_process(settings),
        "probe": probe_process(settings),
        "prometheus": prometheus_process(settings, scrape_interval_s=1.0),
    }
    producers = ("ingest", "probe")
    try:
        # The stream first, on a topic nobody created yet: its query waits for events instead of failing.
        with running(settings, [p for name, p in processes.items() if name not in producers]):
            _wait(lambda: stream_triggers(settings) > 0, "the stream's query never ran", settings=settings)
            with running(settings, [processes[name] for name in producers]):
                yield settings, processes
    finally:
        release(settings.home.parent)


def _query(settings, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus_url(settings)}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def _value(settings, expr: str) -> float | None:
    result = _query(settings, expr)
    return float(result[0]["value"][1]) if result else None


def _wait(condition, what: str, timeout_s: float = 180, settings=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            logs = ""
            if settings is not None:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                    for p in sorted((settings.state_dir / "logs").glob("*.log"))
                )
            raise AssertionError(f"{what}\n{logs}")
        time.sleep(1)


def test_every_dashboard_and_rule_expression_returns_numbers(observed) -> None:
    settings, _ = observed
    _wait(
        lambda: (_value(settings, 'streamrag_probe_probes_total{outcome="found"}') or 0) >= 3,
        "the probe event was not found three times",
        settings=settings,
    )
    api = httpx.Client(base_url=settings.api_url, timeout=30)
    for _ in range(3):  # spread over several scrapes: a rate needs an increase between two of them
        for mode in ("hybrid", "vector", "keyword"):
            assert api.post("/search", json={"query": "football league championship", "mode": mode}).status_code == 200
        assert api.post("/answer", json={"query": "What changed on the EFL Championship page?"}).status_code == 200
        assert api.post("/search", json={"query": ""}).status_code == 422
        time.sleep(3)
    time.sleep(5)  # a few more scrapes and rule evaluations

    expressions = _dashboard_expressions() + [rule["expr"] for rule in _rules() if "record" in rule]
    recorded = [rule["record"] for rule in _rules() if "record" in rule]
    problems = []
    for expr in expressions + recorded:
        result = _query(settings, expr)
        values = [float(sample["value"][1]) for sample in result]
        if not values or any(math.isnan(v) for v in values):
            problems.append(f"{expr!r} -> {values or 'no data'}")
    assert not problems, "\n".join(problems)


def test_the_probe_measures_searchable_latency_below_the_target(observed) -> None:
    """The probe's delay is exported, agrees with the pipeline's own ingested -> indexed histogram, and its median
    over half a minute of the warm pipeline is within issue #5's target (p50 <= 2 s) at the recording's rate
    (10 events/s). The target is a benchmark's figure: a machine busy with more than the test (load above two runnable
    processes a core) is only held to a bound that a stalled pipeline would miss."""
    settings, _ = observed
    _wait(lambda: (_value(settings, 'streamrag_probe_probes_total{outcome="found"}') or 0) >= 5, "too few probes found")
    time.sleep(30)  # the last 30 s (~10 probes) then hold a warm pipeline's only, not the start's backlog
    recent = _value(
        settings, "histogram_quantile(0.5, sum by (le) (rate(streamrag_probe_searchable_seconds_bucket[30s])))"
    )
    pipeline = _value(
        settings, "histogram_quantile(0.5, sum by (le) (rate(streamrag_ingested_to_indexed_seconds_bucket[30s])))"
    )
    last = _value(settings, "max(streamrag_probe_last_searchable_seconds)")
    print(f"probe p50 (1 min) {recent:.2f} s, last {last:.2f} s; pipeline ingested->indexed p50 {pipeline:.2f} s")
    assert recent is not None and pipeline is not None and last is not None
    assert 0 < last < 60
    # The probe adds the API's polling (100 ms) and the producer's send to what the index measures inside.
    assert 0.5 * pipeline <= recent <= 2 * pipeline + 1, (recent, pipeline)
    busy = os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
    bound = 10.0 if busy else 2.0
    assert recent <= bound, f"probe ingested -> searchable p50 {recent:.2f} s is over {bound:g} s (busy: {busy})"
    probes = httpx.post(f"{settings.api_url}/search", json={"query": "streamrag freshness probe", "top_k": 50}).json()
    assert not any(hit["wiki"] == "streamrag_probe" for hit in probes["hits"]), "probes stay out of user results"


def test_stopping_the_stream_makes_the_lag_and_no_progress_alerts_fire(observed) -> None:
    settings, processes = observed
    processes["stream"].stop()
    # SIGTERM stops it, not the SIGKILL after `stop_timeout_s` (a stop sent while py4j still waited on
    # awaitTermination used to hang).
    assert processes["stream"].proc.returncode == 0, processes["stream"].tail_log(10)

    def states() -> dict[str, str]:
        alerts = httpx.get(f"{prometheus_url(settings)}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in alerts}

    _wait(lambda: {"StreamragLagGrowing", "StreamragNoProgress"} <= set(states()), f"alerts: {states()}", 240)
    assert set(states().values()) <= {"pending", "firing"}
    assert (_value(settings, "streamrag:consumer_lag:sum") or 0) > 50
    processes["probe"].stop()  # its probe is waiting for an event the stopped stream will not index
    assert processes["probe"].proc.returncode == 0, processes["probe"].tail_log(5)
