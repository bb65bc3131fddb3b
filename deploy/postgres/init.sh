#!/bin/sh
# Runs once, when the production Postgres volume is created, as the superuser (POSTGRES_USER), which nothing else
# uses: a role per service with the least it needs, the Dagster database, pgvector. The same statements are the
# README's grants for any external Postgres.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$POSTGRES_OWNER_PASSWORD" \
  -v api_password="$POSTGRES_API_PASSWORD" \
  -v dagster_password="$POSTGRES_DAGSTER_PASSWORD" <<'SQL'
-- The stream, ingest, Dagster's runs and migrations: own the documents schema.
CREATE ROLE streamrag_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
-- The API: reads every table, writes nothing, makes nothing.
CREATE ROLE streamrag_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'api_password';
GRANT pg_read_all_data TO streamrag_api;
-- Dagster's instance: its own database.
CREATE ROLE streamrag_dagster LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'dagster_password';
CREATE DATABASE streamrag OWNER streamrag_owner;
CREATE DATABASE dagster OWNER streamrag_dagster;
REVOKE CONNECT, TEMPORARY ON DATABASE streamrag FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE dagster FROM PUBLIC;
GRANT CONNECT ON DATABASE streamrag TO streamrag_api;
\connect streamrag
-- pgvector is not a trusted extension: the superuser makes it, before the owner's migrations run.
CREATE EXTENSION IF NOT EXISTS vector;
SQL
