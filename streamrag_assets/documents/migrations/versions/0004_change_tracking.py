"""change tracking: each document row carries the id of the transaction that last wrote it, and removed rows are
logged with theirs, so a follower (the API's keyword index) can read exactly what committed since its last
snapshot: `written_xid >= pg_snapshot_xmin(prev) AND NOT pg_visible_in_snapshot(written_xid, prev)`

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Inserts take the default; updates (upserts' ON CONFLICT DO UPDATE, tombstones, renames) the trigger. Rows
    # already there keep NULL (adding the column with its default in one step would rewrite the table under an
    # exclusive lock); a follower reads them in its first, full read.
    op.execute("ALTER TABLE documents ADD COLUMN written_xid xid8")
    op.execute("ALTER TABLE documents ALTER COLUMN written_xid SET DEFAULT pg_current_xact_id()")
    op.execute(
        "CREATE FUNCTION documents_note_writer() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.written_xid := pg_current_xact_id(); RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER documents_note_writer BEFORE UPDATE ON documents "
        "FOR EACH ROW EXECUTE FUNCTION documents_note_writer()"
    )
    op.create_index("documents_written_xid", "documents", ["written_xid"])

    # Rows deleted for good (retention) leave their id behind; one statement-level trigger per DELETE.
    op.execute(
        "CREATE TABLE document_removals ("
        " doc_id varchar NOT NULL,"
        " removed_xid xid8 NOT NULL DEFAULT pg_current_xact_id(),"
        " removed_at timestamptz NOT NULL DEFAULT now())"
    )
    op.create_index("document_removals_removed_xid", "document_removals", ["removed_xid"])
    op.execute(
        "CREATE FUNCTION documents_note_removals() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO document_removals (doc_id) SELECT doc_id FROM gone; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER documents_note_removals AFTER DELETE ON documents "
        "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION documents_note_removals()"
    )
    # TRUNCATE fires no DELETE trigger: it is logged as '*', "every document" (no doc_id looks like that).
    op.execute(
        "CREATE FUNCTION documents_note_truncate() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO document_removals (doc_id) VALUES ('*'); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER documents_note_truncate AFTER TRUNCATE ON documents "
        "FOR EACH STATEMENT EXECUTE FUNCTION documents_note_truncate()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER documents_note_truncate ON documents")
    op.execute("DROP FUNCTION documents_note_truncate()")
    op.execute("DROP TRIGGER documents_note_removals ON documents")
    op.execute("DROP FUNCTION documents_note_removals()")
    op.drop_table("document_removals")
    op.execute("DROP TRIGGER documents_note_writer ON documents")
    op.execute("DROP FUNCTION documents_note_writer()")
    op.drop_index("documents_written_xid", "documents")
    op.drop_column("documents", "written_xid")
