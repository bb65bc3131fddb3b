"""Run tags shared by the domains' jobs."""

SPARK_TAGS = {"streamrag/spark": "medallion"}  # the instance runs one such job at a time
