"""The Dagster code location loads and validates, and the webserver serves it from the Postgres instance."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from streamrag_assets.services.dagster import dagster_env, dagster_webserver_process, prepare_dagster_home
from streamrag_tests.conftest import PROJECT_ROOT, VENV_BIN, free_port

pytestmark = pytest.mark.integration


def test_definitions_load() -> None:
    from streamrag_assets.definitions import defs

    keys = {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}
    assert "wikimedia_recentchange" in keys


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


def test_webserver_answers_with_the_asset_graph(stack) -> None:
    settings = stack.settings.model_copy(update={"dagster_port": free_port()})
    webserver = dagster_webserver_process(settings)
    webserver.env = {**settings.to_env(), **webserver.env}
    webserver.start()
    try:
        webserver.wait_ready(120)
        query = "{ assetNodes { assetKey { path } } }"
        response = httpx.post(f"{settings.dagster_url}/graphql", json={"query": query}, timeout=30)
        assert response.status_code == 200
        paths = [node["assetKey"]["path"] for node in response.json()["data"]["assetNodes"]]
        assert ["wikimedia_recentchange"] in paths
        # The instance lives in the embedded Postgres, not in files under DAGSTER_HOME.
        with __import__("psycopg").connect(
            f"host=127.0.0.1 port={settings.postgres_port} user=postgres dbname={settings.postgres_dagster_db}"
        ) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"runs", "event_logs"} <= tables
    finally:
        webserver.stop()
