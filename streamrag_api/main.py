"""The retrieval service. This first cut serves /health; search and answer routes join it later."""

from __future__ import annotations

import time

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url

from streamrag_assets.services.process import port_is_open
from streamrag_assets.settings import get_settings

app = FastAPI(title="streamrag", version="0.1.0", description="Real-time RAG over Wikimedia recent changes.")


def _check_postgres() -> tuple[bool, str]:
    url = make_url(get_settings().app_database_url).set(drivername="postgresql")
    try:
        with psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True, "ok"
    except psycopg.Error as exc:
        return False, type(exc).__name__


def _check_broker() -> tuple[bool, str]:
    servers = get_settings().bootstrap_servers.split(",")
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        if port_is_open(host, int(port), timeout=1):
            return True, "ok"
    return False, "unreachable"


@app.get("/health")
def health() -> JSONResponse:
    checks = {}
    for name, check in (("postgres", _check_postgres), ("broker", _check_broker)):
        began = time.perf_counter()
        ok, detail = check()
        checks[name] = {
            "status": "up" if ok else "down",
            "detail": detail,
            "latency_ms": round((time.perf_counter() - began) * 1000, 1),
        }
    healthy = all(c["status"] == "up" for c in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "dependencies": checks},
        status_code=200 if healthy else 503,
    )
