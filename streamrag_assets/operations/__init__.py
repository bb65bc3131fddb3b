"""The platform's maintenance operations, each written once and called alike by the CLI (`streamrag replay ...`,
`streamrag index`), the Dagster jobs and assets, and the trailing-window schedule:

- ``rebuild``: Silver, quarantine and Gold recomputed from Bronze.
- ``reprocess``: the topic re-read into Bronze from an offset or a time, with a fresh checkpoint.
- ``reindex``: the Gold documents of a window of event time (re)indexed into pgvector.
- ``gold_gaps``: the Gold documents a window of Silver should have produced, restored from Bronze.
- ``dead_letters``: the documents that failed to index, tried again.

Each takes a ``progress`` callback (see ``progress``): the CLI prints the lines, Dagster logs them to the run.
"""
