"""How a service process stops: SIGTERM/SIGINT first unwind a blocking start, then only ask loops to finish."""

from __future__ import annotations

import signal
import threading

from prometheus_client import start_http_server

stopping = threading.Event()  # set by SIGTERM/SIGINT, for loops that poll it


class Shutdown(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT so blocking reads unwind through `finally` blocks (a
    BaseException, like KeyboardInterrupt, so no library's `except Exception` can swallow it)."""


def _raise_shutdown(*_: object) -> None:
    stopping.set()
    raise Shutdown


def _note_shutdown(*_: object) -> None:
    stopping.set()


def raise_on_signal() -> None:
    """From now on SIGTERM/SIGINT raise `Shutdown` in the main thread (and set `stopping`)."""
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)


def note_on_signal() -> None:
    """From now on SIGTERM/SIGINT only set `stopping`: for a main thread that waits inside a call that must not be
    interrupted by an exception (a py4j call, see `entry/stream.py`)."""
    signal.signal(signal.SIGTERM, _note_shutdown)
    signal.signal(signal.SIGINT, _note_shutdown)


def serve_metrics(port: int, host: str) -> None:
    """This process's Prometheus endpoint (a daemon thread); port 0 = none."""
    if port:
        start_http_server(port, addr=host)
