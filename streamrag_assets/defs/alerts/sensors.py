"""Freshness alerts: when a table's freshness turns WARN or FAIL, or recovers, post it to a webhook (Slack-compatible
JSON), log it, and count it in a Prometheus metric served by the code location."""

import logging

import dagster as dg
import httpx
from prometheus_client import Counter
from tenacity import retry, stop_after_attempt, wait_exponential

from streamrag_assets.defs.shared.keys import TABLES, TOPIC
from streamrag_assets.settings import get_settings

log = logging.getLogger(__name__)

FRESHNESS_ALERTS = Counter(
    "streamrag_freshness_alerts", "Freshness state changes alerted, by asset and new state.", ["asset", "state"]
)
BAD = {"WARN", "FAIL"}


def worth_alerting(old: str, new: str) -> bool:
    """Into WARN/FAIL, between them, or back out of them (a recovery)."""
    return new != old and (new in BAD or old in BAD)


def message(asset: str, old: str, new: str, dagster_url: str) -> dict:
    icon = {"WARN": ":warning:", "FAIL": ":red_circle:"}.get(new, ":white_check_mark:")
    verb = "recovered" if new not in BAD else f"is {new}"
    return {
        "text": f"{icon} streamrag: `{asset}` freshness {verb} (was {old}). {dagster_url}/assets/{asset}",
        "asset": asset,
        "previous_state": old,
        "state": new,
    }


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=2), reraise=True)
def post(url: str, payload: dict) -> None:
    httpx.post(url, json=payload, timeout=5).raise_for_status()


def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Alert on every freshness state change the daemon recorded since the cursor (an event-log storage id), so no
    transition is missed however far apart the ticks are."""
    settings = get_settings()
    watched = {TOPIC, *TABLES}
    records = context.instance.get_event_records(
        dg.EventRecordsFilter(
            event_type=dg.DagsterEventType.FRESHNESS_STATE_CHANGE,
            after_cursor=int(context.cursor) if context.cursor else None,
        ),
        ascending=True,
        limit=200,
    )
    cursor = context.cursor
    for record in records:
        cursor = str(record.storage_id)
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        change = event.asset_freshness_state_change_data
        old, new = change.previous_state.value, change.new_state.value
        if change.key not in watched or not worth_alerting(old, new):
            continue
        asset = change.key.to_user_string()
        payload = message(asset, old, new, settings.dagster_url)
        (context.log.warning if new in BAD else context.log.info)(payload["text"])
        FRESHNESS_ALERTS.labels(asset, new).inc()
        if settings.alert_webhook_url:
            try:
                post(settings.alert_webhook_url, payload)
            except httpx.HTTPError as exc:  # not the exception's text: it names the URL, and the URL is the secret
                reason = (
                    f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
                )
                context.log.error(f"the freshness alert for {asset} could not be posted to the webhook: {reason}")
    return dg.SensorResult(cursor=cursor)


def freshness_alert_sensor(interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="freshness_alerts",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts a Slack-compatible alert to STREAMRAG_ALERT_WEBHOOK_URL (and logs it) when a table's "
        "freshness turns WARN or FAIL and when it recovers.",
    )
    def freshness_alerts(context: dg.SensorEvaluationContext):
        return evaluate(context)

    return freshness_alerts


freshness_alerts = freshness_alert_sensor(get_settings().sensor_interval_s)
