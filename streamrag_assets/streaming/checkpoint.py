"""The medallion query's checkpoints: <home>/checkpoints/medallion/epoch-N, one per epoch (a new one only by
`reprocess`), the lock that lets one query at a time use them, and what Spark committed in them."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamrag_assets.settings import Settings

EPOCH_STRIDE = 1_000_000_000  # batch keys: epoch * stride + Spark batch id, unique across checkpoints


class QueryAlreadyRunning(RuntimeError):
    pass


def checkpoint_root(settings: Settings) -> Path:
    return settings.state_dir / "checkpoints" / "medallion"


def current_epoch(settings: Settings) -> int:
    root = checkpoint_root(settings)
    epochs = [int(p.name.split("-")[1]) for p in root.glob("epoch-*")] if root.exists() else []
    return max(epochs, default=0)


@contextmanager
def checkpoint_lock(settings: Settings) -> Iterator[None]:
    """Held while a query uses the checkpoints: the continuous query and an availableNow run (Dagster, CLI) must not
    run at once. The kernel releases it when the holder dies, even by SIGKILL."""
    path = checkpoint_root(settings) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QueryAlreadyRunning(
                f"another streaming query holds {path} (the continuous `streamrag stream`, or a run in progress); "
                "it keeps the tables up to date"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def query_running(settings: Settings) -> bool:
    """Whether some process holds the checkpoint lock (the continuous query, or a run in progress)."""
    try:
        with checkpoint_lock(settings):
            return False
    except QueryAlreadyRunning:
        return True


def last_committed_batch(settings: Settings, epoch: int) -> int | None:
    """The id of the last micro-batch Spark committed in ``epoch``'s checkpoint."""
    commits = checkpoint_root(settings) / f"epoch-{epoch}" / "commits"
    ids = [int(p.name) for p in commits.glob("[0-9]*")] if commits.exists() else []
    return max(ids, default=None)


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The next offset per partition after the last micro-batch Spark committed (from the checkpoint files)."""
    epoch = current_epoch(settings)
    last = last_committed_batch(settings, epoch)
    if last is None:
        return {}
    lines = (checkpoint_root(settings) / f"epoch-{epoch}" / "offsets" / str(last)).read_text().strip().splitlines()
    return {int(p): int(o) for p, o in json.loads(lines[-1]).items()}
