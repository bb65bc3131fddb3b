"""database identity: one random id made when the schema is, so that a process keeping state about this database on
disk (the API's keyword index, `streamrag_api.keyword`) can tell this database from another one - a database
dropped and created again, another cluster at the same address - whose transaction ids mean other things.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE database_identity ("
        " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " only_one boolean NOT NULL DEFAULT true UNIQUE CHECK (only_one))"
    )
    op.execute("INSERT INTO database_identity DEFAULT VALUES")


def downgrade() -> None:
    op.execute("DROP TABLE database_identity")
