-- Runs once when the production Postgres volume is created: the Dagster database and pgvector.
CREATE DATABASE dagster;
CREATE EXTENSION IF NOT EXISTS vector;
