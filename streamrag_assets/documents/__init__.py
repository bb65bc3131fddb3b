"""The documents database: the one owner of its tables — models, migrations, the writer (upsert, tombstones,
progress, dead letters, heartbeats) and the read queries the API and the checks use."""
