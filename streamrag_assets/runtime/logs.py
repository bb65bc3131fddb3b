"""Service logs that do not grow forever.

Each child writes its stdout and stderr straight into ``<state>/logs/<service>.log`` (opened for appending, see
`ManagedProcess.start`), so no logging handler of ours sees the lines. The supervisor rotates the files the way
logrotate's ``copytruncate`` does: a file past the size limit is copied to ``<name>.1`` (older copies shift to
``.2`` … and the oldest beyond ``keep`` goes), then truncated in place. The child keeps its descriptor; as it writes
in append mode, its next line lands at the start of the emptied file. A line written in the instant between the copy
and the truncation is lost, which is copytruncate's known trade (written here because logrotate is a system package
and Python's rotating handlers rotate only their own process's logging).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def rotate_if_large(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` when it holds ``max_bytes`` or more, keeping ``keep`` older copies; True if it did."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    rotated(path, keep).unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        if rotated(path, n).exists():
            rotated(path, n).replace(rotated(path, n + 1))
    if keep > 0:
        shutil.copyfile(path, rotated(path, 1))
    os.truncate(path, 0)
    return True
