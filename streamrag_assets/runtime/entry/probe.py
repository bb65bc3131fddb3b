"""The freshness probe's process: inject a marked event on an interval, find it with /search, export the delay."""

from __future__ import annotations

import logging

from streamrag_assets.probe import FreshnessProbe
from streamrag_assets.runtime.memory import release_periodically
from streamrag_assets.runtime.signals import note_on_signal, serve_metrics, stopping
from streamrag_assets.settings import Settings


def main(settings: Settings) -> None:
    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    serve_metrics(settings.probe_metrics_port, settings.bind_host)
    release_periodically(settings.memory_trim_interval_s)
    note_on_signal()
    probe = FreshnessProbe(settings)
    try:
        probe.run(stopping)
    finally:
        probe.close()
