"""The code location: merges each domain's definitions, nothing else."""

import dagster as dg

from streamrag_assets.defs.ingest.assets import wikimedia_recentchange

defs = dg.Definitions(assets=[wikimedia_recentchange])
