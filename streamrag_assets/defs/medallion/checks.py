"""Asset checks on the medallion tables: the contracts of ARCHITECTURE.md checked on the real tables after each run
(and on demand)."""

import dagster as dg
import pyarrow.compute as pc

from streamrag_assets.defs.shared.keys import BRONZE, GOLD, QUARANTINE, SILVER
from streamrag_assets.settings import get_settings
from streamrag_assets.streaming import schemas
from streamrag_assets.streaming.delta import DeltaTables


def _tables() -> DeltaTables:
    return DeltaTables.from_settings(get_settings())


@dg.asset_check(
    asset=BRONZE,
    description="Per partition, Bronze holds every offset from the topic's beginning to its highest one, or the gap "
    "ledger explains the hole (transaction markers, batches a crashed broker never wrote, records lost to retention).",
)
def bronze_offsets_contiguous() -> dg.AssetCheckResult:
    from streamrag_assets.kafka.gaps import GapLedger, ledger_dir

    settings = get_settings()
    bronze = _tables().read("bronze", columns=["topic", "partition", "offset"])
    beginning = _beginning_offsets(settings.bootstrap_servers, settings.topic)
    return bronze_offsets_result(bronze, settings.topic, beginning, GapLedger(ledger_dir(settings.state_dir)))


def bronze_offsets_result(bronze, topic: str, beginning: dict[int, int] | None, ledger) -> dg.AssetCheckResult:
    """The check's verdict on Bronze's ``topic``/``partition``/``offset`` columns (``beginning`` None: the broker did
    not answer, and partitions are taken to begin at 0, which can only report more holes, never fewer)."""
    from streamrag_assets.kafka.gaps import unexplained_holes

    gaps = ledger.gaps(topic)
    holes = unexplained_holes(bronze, topic, beginning or {}, gaps)
    listed = [f"{partition}: {start}..{end - 1}" for partition, spans in holes.items() for start, end in spans]
    explained: dict[str, int] = {}
    for gap in gaps:
        explained[gap.reason] = explained.get(gap.reason, 0) + gap.size
    return dg.AssetCheckResult(
        passed=not holes,
        metadata={
            "bronze_rows": len(bronze),
            "unexplained_holes": len(listed),
            "unexplained_offsets": sum(end - start for spans in holes.values() for start, end in spans),
            "unexplained_sample": listed[:20],
            "explained_offsets_by_reason": explained,
            "beginning_offsets": "unknown: the broker did not answer" if beginning is None else str(beginning),
            "ledger": str(ledger.path(topic)),
        },
    )


def _beginning_offsets(bootstrap_servers: str, topic: str) -> dict[int, int] | None:
    from kafka.errors import KafkaError

    from streamrag_assets.kafka import offsets as kafka_offsets

    try:
        consumer = kafka_offsets.make_consumer(bootstrap_servers, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    except KafkaError:
        return None
    try:
        tps = kafka_offsets.topic_partitions(consumer, topic, timeout_s=5)
        return kafka_offsets.beginning_offsets(consumer, tps)
    except (KafkaError, LookupError):
        return None
    finally:
        consumer.close()


@dg.asset_check(asset=SILVER, description="Silver has exactly the contract's columns and types.", blocking=True)
def silver_schema_valid() -> dg.AssetCheckResult:
    table = _tables().table("silver")
    if table is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no Silver table yet"})
    actual = table.schema().to_arrow()
    expected = schemas.SILVER_SCHEMA
    missing = [f.name for f in expected if f.name not in actual.names]
    wrong = [
        f"{f.name}: {actual.field(f.name).type} != {f.type}"
        for f in expected
        if f.name in actual.names and not actual.field(f.name).type.equals(f.type)
    ]
    return dg.AssetCheckResult(passed=not missing and not wrong, metadata={"missing": missing, "wrong_types": wrong})


@dg.asset_check(asset=SILVER, description="Each event id appears once in Silver, across restarts.")
def silver_no_duplicate_event_ids() -> dg.AssetCheckResult:
    ids = _tables().read("silver", columns=["event_id"])["event_id"]
    duplicates = len(ids) - len(pc.unique(ids))
    return dg.AssetCheckResult(passed=duplicates == 0, metadata={"rows": len(ids), "duplicates": duplicates})


@dg.asset_check(
    asset=QUARANTINE,
    description="Quarantined records stay under the threshold share of Bronze (STREAMRAG_QUARANTINE_MAX_RATE).",
)
def quarantine_rate_under_threshold() -> dg.AssetCheckResult:
    tables = _tables()
    bronze = tables.read("bronze", columns=["offset"]).num_rows
    quarantined = tables.read("quarantine", columns=["offset"]).num_rows
    rate = quarantined / bronze if bronze else 0.0
    limit = get_settings().quarantine_max_rate
    return dg.AssetCheckResult(
        passed=rate <= limit,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"bronze": bronze, "quarantined": quarantined, "rate": round(rate, 4), "limit": limit},
    )


@dg.asset_check(asset=GOLD, description="Every Gold document has text and a page URL.")
def gold_documents_complete() -> dg.AssetCheckResult:
    gold = _tables().read("gold", columns=["text", "page_url"])
    empty = sum(
        1 for t, u in zip(gold["text"].to_pylist(), gold["page_url"].to_pylist(), strict=True) if not t or not u
    )
    return dg.AssetCheckResult(passed=empty == 0, metadata={"documents": gold.num_rows, "without_text_or_url": empty})
