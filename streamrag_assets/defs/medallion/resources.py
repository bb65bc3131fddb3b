"""The Spark session the medallion asset runs in, configured as the stream's own."""

import dagster as dg
from dagster_pyspark import PySparkResource

from streamrag_assets.settings import Settings, get_settings


def pyspark_resource(settings: Settings) -> PySparkResource:
    from streamrag_assets.streaming.spark import prepare_environment, session_conf

    # The JVM, started when a run first uses the session, must inherit PYSPARK_PYTHON: Python workers that plan the
    # Kafka data source read the environment, not the configuration.
    prepare_environment(settings)
    return PySparkResource(spark_config=session_conf(settings))


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"pyspark": pyspark_resource(get_settings())})
