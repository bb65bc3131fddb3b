"""Dagster definitions, one folder per domain, each with assets.py, checks.py, jobs.py, resources.py, schedules.py and
sensors.py as it needs; `streamrag_assets.definitions` loads every module here, so a new definition needs no list.

Asset, op and check bodies import the pipeline (Spark, the embedder, the operations) when they run, not at module
level: the webserver and the daemon load these definitions and must not pay for Spark (~1.7 s and ~200 MB a process).
"""
