"""The checks behind GET /health: each dependency up or down, with a line saying why, each within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from streamrag_assets.documents.heartbeat import latest
from streamrag_assets.documents.liveness import STREAM
from streamrag_assets.runtime.process import local_http, port_is_open

if TYPE_CHECKING:
    from streamrag_api.deps import Services

CHECK_TIMEOUT_S = 5


def check_postgres(svc: Services) -> tuple[bool, str]:
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True, "ok"
    except (OperationalError, DBAPIError) as exc:
        return False, type(exc.orig).__name__ if exc.orig else "unreachable"


def check_broker(svc: Services) -> tuple[bool, str]:
    for server in svc.settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if port_is_open(host, int(port), timeout=1):
            return True, f"{host}:{port} accepts connections"
    return False, "no bootstrap server accepts connections"


def check_stream(svc: Services) -> tuple[bool, str]:
    try:
        beat = latest(svc.engine, STREAM)
    except (OperationalError, DBAPIError):
        return False, "heartbeat unreadable (postgres down)"
    if beat is None:
        return False, "no heartbeat yet (is `streamrag stream` running?)"
    at, detail = beat
    age = (datetime.now(UTC) - at).total_seconds()
    if age > svc.settings.stream_heartbeat_max_age_s:
        return False, f"last heartbeat {age:.0f} s ago"
    if detail.get("paused_for"):  # an operator's replay holds the tables; the query resumes after it
        return True, f"paused for {detail['paused_for']} (heartbeat {age:.1f} s ago, lag {detail.get('lag')})"
    if not detail.get("active", False):
        return False, "the streaming query is not active"
    # Alive is not enough: events waiting while no micro-batch finishes is a stream that is stuck.
    progress_at = detail.get("last_batch_at") or detail.get("started_at")
    if detail.get("lag") and progress_at:
        quiet = (datetime.now(UTC) - datetime.fromisoformat(progress_at)).total_seconds()
        if quiet > svc.settings.stream_stall_s:
            return False, f"stalled: {detail['lag']} events wait and no micro-batch finished for {quiet:.0f} s"
    return True, f"heartbeat {age:.1f} s ago, lag {detail.get('lag')}"


def check_dagster(svc: Services) -> tuple[bool, str]:
    try:
        response = local_http().get(f"{svc.settings.dagster_url}/server_info", timeout=2)
        return response.status_code == 200, f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return False, type(exc).__name__


CHECKS: dict[str, Callable[[Services], tuple[bool, str]]] = {
    "postgres": check_postgres,
    "broker": check_broker,
    "stream": check_stream,
    "dagster": check_dagster,
}


async def check_dependencies(svc: Services) -> dict[str, dict[str, Any]]:
    """Every check at once, each in a thread of its own: its status ("up" or "down"), detail and latency."""

    async def timed(check: Callable[[Services], tuple[bool, str]]) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            ok, detail = await asyncio.wait_for(asyncio.to_thread(check, svc), timeout=CHECK_TIMEOUT_S)
        except TimeoutError:
            ok, detail = False, f"no answer within {CHECK_TIMEOUT_S} s"
        return {
            "status": "up" if ok else "down",
            "detail": detail,
            "latency_ms": round((time.perf_counter() - began) * 1000, 1),
        }

    results = await asyncio.gather(*(timed(check) for check in CHECKS.values()))
    return dict(zip(CHECKS, results, strict=True))
