"""The code location: every domain's definitions under `defs/`, found by Dagster's loader (no list to keep)."""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
