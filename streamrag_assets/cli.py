"""`streamrag`: run and inspect the platform."""

from __future__ import annotations

import json
import logging
import signal
import sys

import typer

from streamrag_assets.services.process import ServiceError
from streamrag_assets.services.supervisor import Supervisor, down, running_supervisor, status
from streamrag_assets.settings import Settings

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
def up() -> None:
    """Start the whole platform on embedded defaults (broker, object store, Postgres, Dagster, API).

    Runs in the foreground; Ctrl-C (or `streamrag down`, or SIGTERM) stops everything cleanly.
    """
    settings = _settings()
    supervisor = Supervisor(settings, progress=lambda msg: typer.echo(f"[streamrag] {msg}"))
    try:
        supervisor.start()
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    typer.echo("")
    typer.secho("streamrag is up:", bold=True)
    typer.echo(f"  API + UI        {settings.api_url}  (docs: {settings.api_url}/docs)")
    typer.echo(f"  Dagster         {settings.dagster_url}")
    typer.echo(f"  Kafka           {settings.bootstrap_servers}  topic {settings.topic}")
    typer.echo(f"  Postgres        {settings.app_database_url.split('@')[-1]}")
    typer.echo(f"  state           {settings.state_dir}")
    typer.echo("Ctrl-C or `streamrag down` stops it.")
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        supervisor.watch()
    finally:
        supervisor.stop()
        typer.echo("[streamrag] stopped")


@app.command("api")
def api_command(
    host: str = typer.Option(None, help="Interface to listen on (default: STREAMRAG_BIND_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: STREAMRAG_API_PORT, 8000)."),
) -> None:
    """Serve the retrieval API and UI (what `up` runs; use it alone against external servers)."""
    import uvicorn

    settings = _settings()
    uvicorn.run("streamrag_api.main:app", host=host or settings.bind_host, port=port or settings.api_port,
                access_log=False, log_level="warning")


@app.command("down")
def down_command() -> None:
    """Stop a running `streamrag up` (and any process of ours it left behind)."""
    settings = _settings()
    try:
        stopped = down(settings)
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    typer.echo("stopped" if stopped else "nothing was running")


@app.command("status")
def status_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show each service: up/down, address, data size. Exit code 0 only when all are up."""
    settings = _settings()
    rows = status(settings)
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        supervisor = running_supervisor(settings)
        typer.echo(f"supervisor: {f'running (pid {supervisor})' if supervisor else 'not running'}")
        typer.echo(f"{'service':<20} {'state':<6} {'pid':>7}  {'address':<32} data")
        for row in rows:
            state = typer.style("up", fg="green") if row.up else typer.style("down", fg="red")
            typer.echo(
                f"{row.name:<20} {state:<15} {row.pid or '-':>7}  {row.address:<32} {_human(row.data_bytes)}"
            )
    raise typer.Exit(code=0 if rows and all(r.up for r in rows) else 3)


if __name__ == "__main__":
    app()
