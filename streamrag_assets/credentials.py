"""The embedded Postgres' roles and their passwords.

`up` initialises the cluster with scram-sha-256 and a generated superuser password, then gives each service a role
of its own (`runtime.postgres.ensure_roles`): the stream, ingest and Dagster's jobs own the documents database
(OWNER_ROLE), the API only reads it (API_ROLE), Dagster's instance has a database of its own (DAGSTER_ROLE). The
superuser is used only to create them. Each password is a file of its own in the secrets folder (0700, files 0600),
written once; a process reads the one file of the role it connects as.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SUPERUSER = "postgres"
OWNER_ROLE = "streamrag_owner"
API_ROLE = "streamrag_api"
DAGSTER_ROLE = "streamrag_dagster"
ROLES = (SUPERUSER, OWNER_ROLE, API_ROLE, DAGSTER_ROLE)


def password_path(secrets_dir: Path, role: str) -> Path:
    return secrets_dir / f"postgres-{role}.password"


def read_password(secrets_dir: Path, role: str) -> str | None:
    """The role's password, or None before `up` first made it (or when the folder cannot be read)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
        return password_path(secrets_dir, role).read_text().strip() or None
    return None


def ensure_password(secrets_dir: Path, role: str) -> str:
    """The role's password, generated and written (0600, in a 0700 folder) the first time."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    existing = read_password(secrets_dir, role)
    if existing:
        return existing
    password = secrets.token_urlsafe(32)
    path = password_path(secrets_dir, role)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # an empty file left by an interrupted write
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(password + "\n")
    return password
