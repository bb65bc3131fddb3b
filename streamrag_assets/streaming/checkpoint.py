"""The medallion query's checkpoints: <home>/checkpoints/medallion/epoch-N, one per epoch (a new one only by
`reprocess`), the lock that lets one query at a time use them, and what Spark committed in them."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streamrag_assets.settings import Settings

EPOCH_STRIDE = 1_000_000_000  # batch keys: epoch * stride + Spark batch id, unique across checkpoints


class QueryAlreadyRunning(RuntimeError):
    pass


def checkpoint_root(settings: Settings) -> Path:
    return (settings.spark_checkpoint_dir or settings.state_dir / "checkpoints").resolve() / "medallion"


def current_epoch(settings: Settings) -> int:
    root = checkpoint_root(settings)
    epochs = [int(p.name.split("-")[1]) for p in root.glob("epoch-*")] if root.exists() else []
    return max(epochs, default=0)


def _take_lock(settings: Settings) -> IO[str]:
    """The checkpoint lock, held while the returned file stays open; `QueryAlreadyRunning` if another holds it."""
    path = checkpoint_root(settings) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - the caller holds it open as the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise QueryAlreadyRunning(
            f"another streaming query holds {path} (the continuous `streamrag stream`, or a run in progress); "
            "it keeps the tables up to date"
        ) from None
    return handle


@contextmanager
def checkpoint_lock(settings: Settings) -> Iterator[None]:
    """Held while a query uses the checkpoints: the continuous query and an availableNow run (Dagster, CLI) must not
    run at once. The kernel releases it when the holder dies, even by SIGKILL."""
    with _take_lock(settings):
        yield


@dataclass(frozen=True)
class PauseRequest:
    who: str
    since: float


def _pause_path(settings: Settings) -> Path:
    return checkpoint_root(settings) / ".pause"


def pause_request(settings: Settings) -> PauseRequest | None:
    """The bounded run waiting for the continuous query to pause, if any. The request is a file its requester holds
    locked: one left behind by a requester that died is no request."""
    path = _pause_path(settings)
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                asked = json.loads(handle.read() or "{}")
            except ValueError:
                asked = {}
            return PauseRequest(str(asked.get("who", "a bounded run")), float(asked.get("since", time.time())))
        return None


@contextmanager
def _pause_requested(settings: Settings, who: str) -> Iterator[None]:
    path = _pause_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        request = open(path, "a+")  # noqa: SIM115 - held as the request until the run ends
        fcntl.flock(request, fcntl.LOCK_EX)  # one bounded run asks at a time
        try:
            if os.fstat(request.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        request.close()  # the previous requester removed the file while this one waited: ask on a fresh one
    try:
        request.seek(0)
        request.truncate()
        request.write(json.dumps({"who": who, "since": time.time()}))
        request.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        request.close()


@contextmanager
def checkpoints_for_run(
    settings: Settings, who: str, wait_s: float = 300.0, progress: Callable[[str], None] | None = None
) -> Iterator[None]:
    """The checkpoints for a bounded run (a rebuild, a reprocess, a catch-up run) while the continuous query may be
    running: the query is asked to pause, stops at a batch boundary and lets go of the lock; it resumes from its
    checkpoint when this run ends, or when the run's process dies (the request is a lock the kernel releases)."""
    with _pause_requested(settings, who):
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                lock = _take_lock(settings)
                break
            except QueryAlreadyRunning:
                if time.monotonic() > deadline:
                    raise QueryAlreadyRunning(
                        f"the streaming query did not pause within {wait_s:g} s; is it stuck? (`streamrag status`)"
                    ) from None
                if not told and progress is not None:
                    progress("asked the continuous query to pause at the end of its micro-batch; waiting")
                    told = True
                time.sleep(0.5)
        with lock:
            yield


def query_running(settings: Settings) -> bool:
    """Whether some process holds the checkpoint lock (the continuous query, or a run in progress)."""
    try:
        with checkpoint_lock(settings):
            return False
    except QueryAlreadyRunning:
        return True


def epoch_batch_key(epoch: int, batch_id: int) -> int:
    """The key a micro-batch's rows carry in ``batch_id`` (Spark's own ids start again in each epoch)."""
    return epoch * EPOCH_STRIDE + batch_id


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
