"""Spark's Python worker daemon for this project's sessions (`spark.python.daemon.module`): pyspark's own daemon,
started with pandas kept out.

No Python worker here calls pandas: the Kafka source yields tuples and the refine step is a ``mapInArrow`` over
pyarrow. But pyarrow asks whether pandas is installed the first time it converts a Python list (Spark's conversion of
every batch the source reads does), and asking imports it: ~31 MiB more anonymous memory in every worker for the
stream's whole run (measured). Kept out here, before the daemon forks, it stays out of each worker it forks: pyarrow
then works without it, and a pandas UDF would fail with ModuleNotFoundError (none is used; the tests would show one).
A finder that refuses the import, not ``sys.modules["pandas"] = None``: pyarrow's compiled import takes the None as
the module."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder


class _KeepOut(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} in this project's Spark Python workers", name=name)
        return None


if "pandas" not in sys.modules:
    sys.meta_path.insert(0, _KeepOut())

from pyspark import daemon  # noqa: E402  (after the finder, so nothing it imports brings pandas in)

if __name__ == "__main__":
    daemon.manager()
