"""Asset checks on pgvector: the index holds what Gold says it should, exactly."""

import dagster as dg

from streamrag_assets.defs.shared.keys import EMBEDDINGS
from streamrag_assets.settings import get_settings
from streamrag_assets.streaming.delta import DeltaTables


@dg.asset_check(asset=EMBEDDINGS, description="pgvector rows = the live (non-delete) Gold documents, exactly.")
def embeddings_reconcile_with_gold() -> dg.AssetCheckResult:
    from sqlalchemy import create_engine

    from streamrag_assets.documents.queries import stored_doc_ids

    gold = DeltaTables.from_settings(get_settings()).read("gold", columns=["doc_id", "op"])
    expected = {d for d, op in zip(gold["doc_id"].to_pylist(), gold["op"].to_pylist(), strict=True) if op != "delete"}
    engine = create_engine(get_settings().app_database_url)
    try:
        with engine.connect() as conn:
            stored = stored_doc_ids(conn)
    finally:
        engine.dispose()
    missing, extra = expected - stored, stored - expected
    return dg.AssetCheckResult(
        passed=not missing and not extra,
        metadata={
            "gold_documents": len(expected),
            "pgvector_rows": len(stored),
            "missing": len(missing),
            "extra": len(extra),
            "missing_sample": sorted(missing)[:10],
        },
    )
