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
