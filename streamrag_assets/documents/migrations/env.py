"""Alembic environment: runs the versioned migrations of the documents database."""

from alembic import context
from sqlalchemy import create_engine, text

from streamrag_assets.documents.models import Base

# Any process may migrate on start (`up`, the stream, the API): one at a time, the others then find nothing to do.
MIGRATION_LOCK = 7_301_940_562

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()


run_migrations_online()
