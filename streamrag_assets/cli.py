"""`streamrag`: run and inspect the platform."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import typer

from streamrag_assets.runtime.process import ServiceError
from streamrag_assets.settings import Settings
from streamrag_assets.terminal import progress_bar, working

app = typer.Typer(
    help="streamrag: real-time RAG over the Wikimedia recentchange stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError: show which setting is wrong, in one line
        raise _fail(f"invalid settings: {exc}".replace("\n", " ")) from None


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _reachable(url: str) -> bool:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=5) as response:
            return response.status_code < 500
    except httpx.HTTPError:
        return False


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python logs every reconnect attempt at WARNING/ERROR; readiness probes expect those.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def up(
    with_prometheus: bool = typer.Option(
        False, "--with-prometheus", help="Also run a real Prometheus (Debian package) scraping every process."
    ),
) -> None:
    """Start the whole platform on embedded defaults (broker, object store, Postgres, Dagster, API).

    Runs in the foreground; Ctrl-C (or `streamrag down`, or SIGTERM) stops everything cleanly.
    """
    # The supervisor (every service's module) is imported by the commands that need it, not by the module: each
    # service runs as `python -m streamrag_assets.cli <service>` and would hold all their imports (~45 MiB each).
    from streamrag_assets.runtime.doctor import diagnose
    from streamrag_assets.runtime.supervisor import Supervisor

    settings = _settings()
    checks = diagnose(settings, live_stream=False)  # the live stream is tried (and said about) once up
    failed = [check for check in checks if check.status == "fail"]
    if failed:
        for check in checks:
            typer.echo(check.line)
        raise _fail(failed[0].line[2:])
    _prepare_model_once(settings)
    supervisor = Supervisor(
        settings, progress=lambda msg: typer.echo(f"[streamrag] {msg}"), with_prometheus=with_prometheus
    )
    try:
        supervisor.start()
    except (ServiceError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    typer.echo("")
    typer.secho("streamrag is up:", bold=True)
    typer.echo(f"  API + UI        {settings.api_url}  (docs: {settings.api_url}/docs)")
    typer.echo(f"  Dagster         {settings.dagster_url}")
    typer.echo(f"  Kafka           {settings.bootstrap_servers}  topic {settings.topic}")
    typer.echo(f"  Postgres        {settings.app_database_url.split('@')[-1]}")
    typer.echo(f"  state           {settings.state_dir}")
    typer.echo(f"  ingest          {settings.ingest_source} -> {settings.topic}")
    if with_prometheus:
        from streamrag_assets.runtime.observability import prometheus_url

        typer.echo(f"  Prometheus      {prometheus_url(settings)}  (alerts: {prometheus_url(settings)}/alerts)")
    typer.echo("Ctrl-C or `streamrag down` stops it.")
    if settings.ingest_source == "wikimedia" and not _reachable(settings.wikimedia_url):
        typer.secho(
            f"note: the live stream {settings.wikimedia_url} cannot be reached from here; ingest keeps retrying. "
            "To run on the bundled recording instead: STREAMRAG_INGEST_SOURCE=recording streamrag up",
            fg=typer.colors.YELLOW,
        )
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        supervisor.watch()
    finally:
        supervisor.stop()
        typer.echo("[streamrag] stopped")


def _prepare_model_once(settings: Settings) -> None:
    """On a machine's first `up`, the model's ONNX files are made before the services start (which would each wait
    for them, silently): in a child process, whose imports (onnx, the quantiser) the supervisor then does not hold."""
    from streamrag_assets.embedding.embedder import get_embedder

    if get_embedder(settings).prepared():
        return
    typer.echo("[streamrag] preparing the embedding model (its ONNX files, once per machine) …")
    began = time.monotonic()
    made = subprocess.run(
        [sys.executable, "-m", "streamrag_assets.cli", "prepare-model"], env={**os.environ, **settings.to_env()}
    )
    if made.returncode != 0:
        raise _fail("the embedding model could not be prepared (its error is above)")
    typer.echo(f"[streamrag] embedding model ready in {time.monotonic() - began:.0f} s")


@app.command("prepare-model")
def prepare_model_command() -> None:
    """Make the embedding model's ONNX files (written from its weights, quantised to int8), once per machine; `up`
    does it when they are missing. A container image can run it at build time."""
    from streamrag_assets.embedding.embedder import get_embedder

    embedder = get_embedder(_settings())
    if not embedder.prepared():
        with working("writing the model's ONNX file and quantising it …"):
            embedder.warm()
    typer.echo(f"{embedder.model_name}: ready")


@app.command("doctor")
def doctor_command() -> None:
    """Check this machine for `up`: Python and Java, the state directory (writable, free space), every port, the
    configured external servers, the live stream. One line each (✓ ok, ! warning, ✗ fails `up`) with the fix."""
    from streamrag_assets.runtime.doctor import diagnose

    checks = diagnose(_settings())
    for check in checks:
        color = {"ok": typer.colors.GREEN, "warn": typer.colors.YELLOW, "fail": typer.colors.RED}[check.status]
        typer.secho(check.line, fg=color)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(code=1)


@app.command("probe")
def probe_command() -> None:
    """Probe freshness end to end: inject a marked event every STREAMRAG_PROBE_INTERVAL_S, find it with /search,
    export the delay (streamrag_probe_searchable_seconds). Probe documents never appear in user results."""
    from streamrag_assets.runtime.entry import probe

    probe.main(_settings())


@app.command("api")
def api_command(
    host: str = typer.Option(None, help="Interface to listen on (default: STREAMRAG_BIND_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: STREAMRAG_API_PORT, 8000)."),
) -> None:
    """Serve the retrieval API and UI (what `up` runs; use it alone against external servers)."""
    from streamrag_assets.runtime.entry import api

    try:
        api.main(_settings(), host, port)
    except ServiceError as exc:
        raise _fail(str(exc)) from None


class Source(StrEnum):
    wikimedia = "wikimedia"
    recording = "recording"
    synthetic = "synthetic"


@app.command("ingest")
def ingest_command(
    source: Source = typer.Option(
        None, help="wikimedia (live), recording (the bundled recording) or synthetic. Default: STREAMRAG_INGEST_SOURCE."
    ),
    rate: float = typer.Option(None, help="Events/s for recording/synthetic (0 = as fast as possible)."),
    since: str = typer.Option(
        None,
        help="Start from this ISO-8601 time (or epoch ms) when there is no stored "
        "position; the live stream keeps about 7 days.",
    ),
    count: int = typer.Option(
        None, help="recording/synthetic: stop the source after this many events (default STREAMRAG_INGEST_COUNT)."
    ),
    url: str = typer.Option(
        None,
        help="Read this SSE URL instead of starting a local recording/synthetic server "
        "(the source name still labels metrics and the stored position).",
    ),
) -> None:
    """Read the recentchange SSE stream into the Kafka topic; resumes where it stopped."""
    from streamrag_assets.runtime.entry import ingest

    settings = _settings()
    if rate is not None:
        settings = settings.model_copy(update={"ingest_rate": rate})
    try:
        ingest.main(settings, source.value if source else settings.ingest_source, url, since, count)
    except ServiceError as exc:
        raise _fail(str(exc)) from None


@app.command("sse-server")
def sse_server_command(
    source: Source = typer.Option(Source.recording, help="recording or synthetic."),
    port: int = typer.Option(None, help="Port (default STREAMRAG_SOURCE_PORT, 8765)."),
    rate: float = typer.Option(None, help="Events/s (0 = as fast as possible; default STREAMRAG_INGEST_RATE)."),
    count: int = typer.Option(None, help="Serve this many events, then idle."),
    seed: int = typer.Option(None, help="Seed of the sequence (same seed, same events)."),
    malformed_fraction: float = typer.Option(None, help="synthetic: fraction of malformed lines."),
    file: Path = typer.Option(
        None,
        help="Serve the lines of this NDJSON file verbatim, in order, one event each, instead of --source "
        "(your own recording, or hostile events for a test); then idle.",
        exists=True,
        dir_okay=False,
    ),
) -> None:
    """Serve recorded or synthetic recentchange events over SSE on 127.0.0.1, like Wikimedia EventStreams."""
    from streamrag_assets.runtime.entry import sse_server

    if source == Source.wikimedia and file is None:
        raise _fail("sse-server serves recorded or synthetic events; wikimedia is the live stream")
    sse_server.main(_settings(), source.value, port, rate, count, seed, malformed_fraction, file)


@app.command("stream")
def stream_command(
    available_now: bool = typer.Option(False, "--available-now", help="Process what is in the topic, then exit."),
) -> None:
    """Run the Spark query raw topic -> Bronze -> Silver (+ quarantine) -> Gold -> pgvector; resumes from its
    checkpoint. The continuous query reports what it writes to Dagster as asset materializations."""
    from streamrag_assets.runtime.entry import stream
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning

    try:
        stream.main(_settings(), available_now, announce=typer.echo)
    except (QueryAlreadyRunning, stream.QueryFailed) as exc:
        raise _fail(str(exc)) from None


replay_app = typer.Typer(
    help="Rebuild tables from Bronze, or re-read the topic from an offset or a time.", no_args_is_help=True
)
app.add_typer(replay_app, name="replay")


def _progress(message: str) -> None:
    """An operation's progress lines, on stderr: stdout keeps only the result."""
    typer.echo(f"[streamrag] {message}", err=True)


@replay_app.command("rebuild")
def replay_rebuild() -> None:
    """Recompute Silver, quarantine and Gold from Bronze (new table versions; same transform code as the stream); a
    running `streamrag stream` pauses meanwhile."""
    from streamrag_assets.operations.rebuild import rebuild_from_bronze
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning

    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    try:
        with progress_bar("rebuilding from Bronze", "rows") as steps:
            who = f"`streamrag replay rebuild` (pid {os.getpid()})"
            counts = rebuild_from_bronze(_settings(), _progress, who=who, steps=steps)
    except QueryAlreadyRunning as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(counts))


@replay_app.command("reprocess")
def replay_reprocess(
    from_offset: list[str] = typer.Option(
        None, "--from-offset", help="PARTITION:OFFSET (repeatable); partitions not named restart from their beginning."
    ),
    from_time: str = typer.Option(
        None, "--from-time", help="ISO-8601 time: re-read from the first offset at or after it in every partition."
    ),
) -> None:
    """Re-read the topic from an offset or time with a fresh checkpoint; a running `streamrag stream` pauses
    meanwhile and resumes in the new checkpoint."""
    from streamrag_assets.isotime import parse_iso_time
    from streamrag_assets.operations.reprocess import OffsetsRemoved, reprocess
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning

    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    settings = _settings()
    if bool(from_offset) == bool(from_time):
        raise _fail("give either --from-offset PARTITION:OFFSET (repeatable) or --from-time ISO-8601")
    try:
        offsets = {int(p): int(o) for p, o in (item.split(":", 1) for item in from_offset or [])}
        when = parse_iso_time(from_time) if from_time else None
    except ValueError:
        raise _fail("--from-offset takes PARTITION:OFFSET with integers; --from-time an ISO-8601 time") from None
    try:
        with progress_bar("re-reading the topic", "events") as steps:
            who = f"`streamrag replay reprocess` (pid {os.getpid()})"
            done = reprocess(settings, offsets or None, when, _progress, who=who, steps=steps)
    except (QueryAlreadyRunning, OffsetsRemoved) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"reprocessed from {done.start} (checkpoint epoch {done.epoch})")


spark_app = typer.Typer(
    help="Run a Spark standalone master or worker from the installed Spark: the cluster the stream's driver runs on "
    "when STREAMRAG_SPARK_MASTER=spark://… (one process per machine or container).",
    no_args_is_help=True,
)
app.add_typer(spark_app, name="spark")


@spark_app.command("master")
def spark_master_command(
    host: str = typer.Option(None, help="Name or address to listen on and advertise (default: the bind host)."),
) -> None:
    """Run a Spark master on STREAMRAG_SPARK_MASTER_PORT (7077), web UI on STREAMRAG_SPARK_MASTER_UI_PORT (8090)."""
    from streamrag_assets.runtime.spark_cluster import exec_daemon, master_command

    settings = _settings()
    exec_daemon(master_command(settings, host or settings.spark_cluster_host), settings)


@spark_app.command("worker")
def spark_worker_command(
    master: str = typer.Argument(None, help="spark://host:port (default: STREAMRAG_SPARK_MASTER)."),
    host: str = typer.Option(None, help="Name or address to listen on and advertise (default: the bind host)."),
    port: int = typer.Option(7078, help="The worker's RPC port."),
    webui_port: int = typer.Option(8091, help="The worker's web UI port."),
) -> None:
    """Run a Spark worker offering STREAMRAG_SPARK_WORKER_CORES cores and STREAMRAG_SPARK_WORKER_MEMORY to its
    executors, which run the micro-batches' refine (they read the topic and write the gap ledger under
    STREAMRAG_HOME, so mount the same state volume as the stream)."""
    from streamrag_assets.runtime.spark_cluster import exec_daemon, worker_command

    settings = _settings()
    url = master or settings.spark_master
    if not url or not url.startswith("spark://"):
        raise _fail("give the master as spark://host:port (or set STREAMRAG_SPARK_MASTER)")
    host = host or settings.spark_cluster_host
    work_dir = settings.state_dir / "spark" / f"worker-{host}"
    work_dir.mkdir(parents=True, exist_ok=True)
    exec_daemon(worker_command(settings, url, host, port, webui_port, work_dir), settings)


@app.command("migrate")
def migrate_command() -> None:
    """Apply the documents database migrations (Alembic); `up` runs this too."""
    from streamrag_assets.runtime.supervisor import migrate_documents

    try:
        migrate_documents(_settings())
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    typer.echo("documents schema is at the latest revision")


def _parse_time(value: str | None, option: str) -> datetime | None:
    from streamrag_assets.isotime import parse_iso_time

    if value is None:
        return None
    try:
        return parse_iso_time(value, naive_tz=UTC)
    except ValueError:
        raise _fail(f"{option} takes an ISO-8601 time such as 2026-11-22T08:00:00Z, not {value!r}") from None


@app.command("index")
def index_command(
    since: str = typer.Option(None, "--since", help="ISO-8601 event time to start at (inclusive). Default: the start."),
    until: str = typer.Option(None, "--until", help="ISO-8601 event time to stop before. Default: the end."),
    retry_dead_letters: bool = typer.Option(
        False, "--retry-dead-letters", help="Only index again the documents that failed before."
    ),
    batch_size: int = typer.Option(256, min=1, max=10_000, help="Documents per transaction."),
) -> None:
    """(Re)index Gold documents into pgvector: backfills, a model change (STREAMRAG_EMBEDDING_MODEL_PATH), failures.

    Safe next to the running stream and safe to repeat: a document is embedded again only when its text or the model
    changed.
    """
    from streamrag_assets.operations import dead_letters
    from streamrag_assets.operations.reindex import reindex_window

    settings = _settings()
    start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
    if start and end and start >= end:
        raise _fail("--since must be before --until")
    if retry_dead_letters:
        result, failing = dead_letters.retry(settings, _progress)
        typer.echo(json.dumps({"upserted": result.upserted, "still_failing": failing}))
        raise typer.Exit(code=1 if failing else 0)
    with progress_bar("indexing Gold", "rows") as steps:
        result = reindex_window(settings, start, end, batch_size, _progress, steps=steps)
    summary = {
        k: getattr(result, k) for k in ("embedded", "upserted", "unchanged", "deleted", "renamed", "dead_letters")
    }
    typer.echo(json.dumps(summary))


@app.command("prune")
def prune_command(
    older_than_days: float = typer.Option(None, help="Default: STREAMRAG_RETENTION_DAYS (7)."),
) -> None:
    """Delete documents whose event time is older than the retention window."""
    from streamrag_assets.documents.retention import prune

    settings = _settings()
    removed = prune(settings.app_database_url, older_than_days or settings.retention_days)
    typer.echo(f"pruned {removed} document(s)")


@app.command("tables")
def tables_command(
    as_of: str = typer.Option(
        None,
        "--as-of",
        help="ISO-8601 time: each table as it was then (Delta time travel; versions older than "
        "STREAMRAG_DELTA_RETENTION_MINUTES are gone once maintained).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the Delta tables (the medallion layers, and gold_diffs beside Gold when diff enrichment is on): where they
    live (local disk or S3, STREAMRAG_DELTA_URI), version, rows, last commit."""
    from streamrag_assets.streaming.delta import DeltaTables
    from streamrag_assets.streaming.schemas import TABLES

    when = _parse_time(as_of, "--as-of")
    delta = DeltaTables.from_settings(_settings())
    rows = [delta.describe(layer, when) for layer in TABLES]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        version = "absent" if row["version"] is None else f"v{row['version']}"
        committed = f"  committed {row['committed_at']}" if row["committed_at"] else ""
        typer.echo(f"{row['table']:<11} {version:>7} {row['rows']:>12,} rows  {row['location']}{committed}")


@app.command("down")
def down_command() -> None:
    """Stop a running `streamrag up` (and any process of ours it left behind)."""
    from streamrag_assets.runtime.supervisor import down

    settings = _settings()
    try:
        stopped = down(settings)
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    typer.echo("stopped" if stopped else "nothing was running")


@app.command("status")
def status_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show each service: state, restarts, address, data size, and for a failing one its last exit and next
    restart. Exit code 0 only when all are up."""
    from streamrag_assets.runtime.disk import space_problem
    from streamrag_assets.runtime.supervisor import running_supervisor, status
    from streamrag_assets.streaming.checkpoint import pause_request

    settings = _settings()
    rows = status(settings)
    full = space_problem(settings.state_dir)
    paused = pause_request(settings)
    if as_json:
        notes = ([{"problem": full}] if full else []) + ([{"stream_paused_for": paused.who}] if paused else [])
        typer.echo(json.dumps([row.__dict__ for row in rows] + notes, indent=2))
    else:
        supervisor = running_supervisor(settings)
        typer.echo(f"supervisor: {f'running (pid {supervisor})' if supervisor else 'not running'}")
        if full:
            typer.echo(typer.style(full, fg="red"))
        if paused:
            since = datetime.fromtimestamp(paused.since, UTC).astimezone().strftime("%H:%M:%S")
            typer.echo(typer.style(f"stream paused since {since} for {paused.who}; it resumes after", fg="yellow"))
        typer.echo(f"{'service':<20} {'state':<11} {'pid':>7} {'restarts':>8}  {'address':<32} data")
        colours = {"up": "green", "starting": "yellow", "backing-off": "yellow"}
        now = datetime.now(UTC).timestamp()
        for row in rows:
            name = row.state or ("up" if row.up else "down")
            if name == "up" and not row.up:
                name = "down"  # the supervisor has not noticed yet; its probe will
            state = typer.style(f"{name:<11}", fg=colours.get(name, "red"))
            typer.echo(
                f"{row.name:<20} {state} {row.pid or '-':>7} {row.restarts:>8}  {row.address:<32} "
                f"{_human(row.data_bytes)}"
            )
            if row.last_exit_reason:
                when = datetime.fromtimestamp(row.last_exit_at or now, UTC).astimezone().strftime("%H:%M:%S")
                line = f"{'':<20} last exit {when}: {row.last_exit_reason}"
                if row.next_attempt_at is not None:
                    line += f"; next attempt in {max(0.0, row.next_attempt_at - now):.0f} s"
                typer.echo(line)
    raise typer.Exit(code=0 if rows and all(r.up for r in rows) and not full else 3)


if __name__ == "__main__":
    app()
