"""Dagster definitions, one folder per domain, each with assets.py, checks.py, jobs.py, resources.py, schedules.py and
sensors.py as it needs; `streamrag_assets.definitions` loads every module here, so a new definition needs no list."""
