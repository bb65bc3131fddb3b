"""The pyspark internals the stream relies on, in one place. pyspark does not promise them across releases, so each
is checked against the installed pyspark by streamrag_tests/unit/test_library_internals.py (the JVM side by
test_spark.py): an upgrade that moves one fails there, not in a running stream."""

from __future__ import annotations

from py4j.java_gateway import JVMView
from pyspark import SparkContext
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQueryListener

# The Java interface Spark's listener wrapper (``PythonStreamingQueryListenerWrapper``, found by ``addListener``'s
# import of its package) calls a Python listener through; py4j: the object's ``class Java: implements = [...]``.
LISTENER_INTERFACE = "org.apache.spark.sql.streaming.PythonStreamingQueryListener"


def jvm(spark: SparkSession) -> JVMView:
    """The session's py4j view of the JVM (``SparkContext._jvm``), for what pyspark does not wrap (log4j's levels)."""
    view = spark.sparkContext._jvm
    assert view is not None, "the Spark session has no JVM gateway (a Spark Connect session?)"
    return view


def raw_listener(handler: object) -> StreamingQueryListener:
    """A listener `spark.streams.addListener` takes whose events reach ``handler`` as py4j objects. ``addListener``
    registers a listener's ``_jlistener``: pyspark's own wraps the listener in an adapter that converts each event
    field by field over py4j; this one wraps ``handler``, which implements `LISTENER_INTERFACE` itself."""

    class RawListener(StreamingQueryListener):
        """Registers ``handler`` with the JVM; Spark calls that, never these methods."""

        def onQueryStarted(self, event) -> None:
            pass

        def onQueryProgress(self, event) -> None:
            pass

        def onQueryTerminated(self, event) -> None:
            pass

        @property
        def _jlistener(self):
            if not hasattr(self, "_wrapper"):
                self._wrapper = SparkContext._jvm.PythonStreamingQueryListenerWrapper(handler)  # type: ignore[union-attr]
            return self._wrapper

    return RawListener()


# The Python workers Spark runs to find, create and plan a Python data source: a query needs each once, to start.
PLANNER_MODULES = frozenset(
    {
        "pyspark.sql.worker.lookup_data_sources",
        "pyspark.sql.worker.create_data_source",
        "pyspark.sql.worker.plan_data_source_read",
    }
)


def stop_planner_workers(spark: SparkSession) -> int:
    """Stop the Python worker factories of `PLANNER_MODULES` (their forking daemons with them); returns how many.

    Spark keeps a factory, and its daemon process (~35 MiB each here), per kind of Python worker for the JVM's life
    (``SparkEnv.pythonWorkers``, private: reached by reflection). A query that has started needs the planners no
    more, and one that needs them again gets new factories (``createPythonWorker`` makes a missing one). Call it only
    while no query is being planned, e.g. from inside a running query's micro-batch."""
    env = jvm(spark).org.apache.spark.SparkEnv.get()
    field = env.getClass().getDeclaredField("pythonWorkers")
    field.setAccessible(True)
    factories = field.get(env)
    idle = []
    entries = factories.iterator()
    while entries.hasNext():
        entry = entries.next()
        if entry._1().workerModule() in PLANNER_MODULES:
            idle.append((entry._1(), entry._2()))
    for key, factory in idle:
        factories.remove(key)
        factory.stop()
    return len(idle)
