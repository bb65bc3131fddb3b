"""The Dagster code location loads and validates, and the webserver serves it from the Postgres instance."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from streamrag_assets.runtime.dagster import (
    dagster_code_process,
    dagster_env,
    dagster_webserver_process,
    prepare_dagster_home,
)
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_tests.harness import PROJECT_ROOT, VENV_BIN, free_port

pytestmark = pytest.mark.integration

ASSETS = (
    "wikimedia_recentchange",
    "bronze_events",
    "silver_events",
    "silver_quarantine",
    "gold_documents",
    "document_embeddings",
)


def test_definitions_load() -> None:
    from streamrag_assets.definitions import defs

    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == set(ASSETS)
    for name, spec in specs.items():
        assert spec.description and spec.owners and spec.kinds, name
        if name != "wikimedia_recentchange":
            assert spec.freshness_policy is not None, f"{name} has a freshness policy"
            assert "dagster/column_schema" in spec.metadata, name
    hourly = {name for name, spec in specs.items() if spec.partitions_def is not None}
    assert hourly == {"gold_documents", "document_embeddings"}
    assert specs["gold_documents"].partitions_def.get_partition_keys()[0] == "2025-01-01-00:00"
    schedule = defs.resolve_schedule_def("trailing_window_backfill")
    assert schedule.job_name == "hourly_reconcile_job" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert {job.name for job in defs.resolve_all_job_defs()} >= {
        "medallion_job",
        "hourly_reconcile_job",
        "rebuild_from_bronze_job",
        "reprocess_topic_job",
        "reembed_job",
    }


def test_dagster_definitions_validate(stack) -> None:
    prepare_dagster_home(stack.settings)
    result = subprocess.run(
        [str(VENV_BIN / "dagster"), "definitions", "validate", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        env={**dagster_env(stack.settings), "PATH": str(VENV_BIN) + ":/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "streamrag" in result.stdout + result.stderr


def _page_shows(browser, url: str, texts: tuple[str, ...], timeout_s: float = 90) -> str:
    """Open ``url`` and wait until the rendered page's text holds every one of ``texts``; returns that text."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    shown = {"text": ""}

    def ready(driver) -> bool:
        shown["text"] = driver.execute_script("return document.body.innerText") or ""
        return all(t in shown["text"] for t in texts)

    try:
        WebDriverWait(browser, timeout_s, poll_frequency=0.5).until(ready)
    except Exception:
        raise AssertionError(f"{url} did not show {texts}; it shows:\n{shown['text'][:2000]}") from None
    return shown["text"]


def test_webserver_answers_with_the_asset_graph(stack, browser) -> None:
    settings = stack.settings.model_copy(update={"dagster_port": free_port(), "dagster_code_port": free_port()})
    code, webserver = dagster_code_process(settings), dagster_webserver_process(settings)
    try:
        for proc in (code, webserver):  # as `up` starts them: the webserver once the code location has loaded
            proc.env = {**settings.to_env(), **proc.env}
            proc.start()
            proc.wait_ready(120)
        query = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
        response = httpx.post(f"{settings.dagster_url}/graphql", json={"query": query}, timeout=30)
        assert response.status_code == 200
        upstream = {
            node["assetKey"]["path"][0]: sorted(k["path"][0] for k in node["dependencyKeys"])
            for node in response.json()["data"]["assetNodes"]
        }
        assert upstream == {
            "wikimedia_recentchange": [],
            "bronze_events": ["wikimedia_recentchange"],
            "silver_events": ["bronze_events"],
            "silver_quarantine": ["bronze_events"],
            "gold_documents": ["silver_events"],
            "document_embeddings": ["gold_documents"],
        }, "the lineage of the asset graph"
        # The instance lives in the embedded Postgres, not in files under DAGSTER_HOME: in Dagster's database, owned by
        # Dagster's role.
        with admin_connect(settings, settings.postgres_dagster_db) as conn:
            tables = dict(
                conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname='public'").fetchall()
            )
        assert {"runs", "event_logs"} <= set(tables) and tables["runs"] == "streamrag_dagster"

        # What an operator sees: the lineage graph and an asset page with its freshness policy, in a real browser.
        docs = Path(os.environ.get("STREAMRAG_DOCS_DIR", settings.state_dir / "docs"))
        docs.mkdir(parents=True, exist_ok=True)
        _page_shows(browser, f"{settings.dagster_url}/asset-groups~group%3A%22medallion%22", ASSETS[1:])
        time.sleep(2)  # let the graph finish its layout before the picture
        browser.save_screenshot(str(docs / "dagster-lineage.png"))
        page = _page_shows(
            browser, f"{settings.dagster_url}/assets/gold_documents", ("gold_documents", "Freshness policy")
        )
        assert "onboarding" not in page.lower(), "no first-run popup covers the page"
        browser.save_screenshot(str(docs / "dagster-asset-freshness.png"))
    finally:
        webserver.stop()
        code.stop()
