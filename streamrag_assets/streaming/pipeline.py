"""The medallion pipeline: one Spark query from the raw topic through Bronze, Silver (+ quarantine) and Gold.

The same `MedallionBatch` serves the long-running query (`streamrag stream`), bounded ``availableNow`` runs
(Dagster, tests, backfills) and replays; they share the checkpoint of the current epoch (`checkpoint`).
A new epoch (fresh checkpoint) is started only by `reprocess`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

import pyarrow.dataset as ds

from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.documents.progress import Marks, Progress, stream_progress_name
from streamrag_assets.documents.store import DocumentIndex, IndexResult, database_unavailable
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.enrichment.diffs import DiffRecords, Enricher
from streamrag_assets.kafka.admin import ensure_topic
from streamrag_assets.kafka.gaps import ledger_dir
from streamrag_assets.kafka.spark_source import pass_through
from streamrag_assets.metrics import (
    STREAM_BATCH_DURATION,
    STREAM_DROPPED,
    STREAM_LAST_BATCH,
    STREAM_PROCESSED_OFFSET,
    STREAM_QUARANTINED,
    STREAM_ROWS,
)
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.batch_result import BatchResult, hour_counts, partition_marks
from streamrag_assets.streaming.checkpoint import (
    checkpoint_root,
    current_epoch,
    epoch_batch_key,
    last_committed_batch,
)
from streamrag_assets.streaming.dedupe import SeenEvents
from streamrag_assets.streaming.delta import LAYERS, DeltaTables
from streamrag_assets.streaming.index_worker import IndexWorker, WriteGate
from streamrag_assets.streaming.listener import listen_to_triggers
from streamrag_assets.streaming.spark import get_spark
from streamrag_assets.streaming.spark_internals import stop_planner_workers
from streamrag_assets.streaming.transforms import (
    Layers,
    bronze_rows,
    kafka_columns,
    refine_arrow,
    refine_dataframe,
    split_layers,
    with_batch_columns,
)

log = logging.getLogger(__name__)

APP_ID = "streamrag-medallion"
CATCH_UP_CHUNK = 2_000  # Gold rows per index transaction when catching up after a restart
SLOW_BATCH_S = 5.0  # a micro-batch slower than this is logged as a warning, with its phases
STREAM_DB_ATTEMPTS = 2  # tries of an index transaction in the stream before it pauses indexing (see IndexWorker)


def tables(settings: Settings) -> DeltaTables:
    return DeltaTables.from_settings(settings)


_WRITERS = ThreadPoolExecutor(max_workers=len(LAYERS), thread_name_prefix="delta-write")


def write_layers(delta: DeltaTables, layers: Layers, batch_key: int, phases: dict[str, float]) -> dict[str, int | None]:
    """Write the batch to the four tables at once (delta-rs writes outside the GIL). Each write is idempotent on its
    own, so a crash between them leaves nothing a re-run of the batch does not complete. A table due for maintenance
    (`DeltaTables.maintain`) gets it after its write. Each write and maintenance is timed into ``phases`` (see
    `_phase`)."""

    def write(layer: str) -> int | None:
        with _phase(phases, f"write_{layer}"):
            if delta.write_once(layer, getattr(layers, layer), APP_ID + "-" + layer, batch_key):
                STREAM_ROWS.labels(layer).inc(len(getattr(layers, layer)))
        if delta.maintenance_due(layer):
            with _phase(phases, f"maintain_{layer}"):
                try:
                    delta.maintain(layer)
                except Exception:  # the batch is committed; the next due maintenance tries again
                    log.warning("maintaining the %s table failed; the stream goes on", layer, exc_info=True)
        return delta.known_version(layer)

    return dict(zip(LAYERS, _WRITERS.map(write, LAYERS), strict=True))


def record_counts(layers: Layers) -> None:
    for reason in ("duplicate", "canary"):
        STREAM_DROPPED.labels(reason).inc(layers.counts[reason])
    for reason, n in layers.quarantine_reasons.items():
        STREAM_QUARANTINED.labels(reason.split(":")[0]).inc(n)


class MedallionBatch:
    """The ``foreachBatch`` function; keeps the Delta tables open between micro-batches. With ``asynchronous``
    (the continuous query) Gold documents are indexed by an `IndexWorker`, otherwise within the batch.

    The continuous query's micro-batches are small (tens of events at 50 events/s): Spark reads them and the driver
    refines them (`refine_arrow`), which skips a Spark task through a Python worker per batch (refine 0.45 -> 0.26 s
    per batch at 50 events/s, measured); so is a backlog after a restart. Bounded runs (`--available-now`, Dagster,
    replays) refine in Spark, on every core, and so does every run on a cluster (executors of their own: the driver
    only writes). Both run the same function (`refine_batches`) over the same Bronze rows."""

    def __init__(
        self,
        settings: Settings,
        epoch: int,
        on_batch: Callable[[BatchResult], None] | None = None,
        asynchronous: bool = False,
    ):
        self.settings = settings
        self.epoch = epoch
        self.delta = tables(settings)
        self.seen = SeenEvents(self.delta)
        self.on_batch = on_batch
        self.refine_on_driver = asynchronous and not settings.spark_on_cluster
        self.index = None
        self.worker: IndexWorker | None = None
        self.enricher: Enricher | None = None
        self.progress_name = stream_progress_name(settings.topic)
        self.planners_running = asynchronous  # the continuous query's, until its first micro-batch (`__call__`)
        if settings.index_enabled:
            # Alongside Spark, a set number of embedding threads (one on two cores); a batch job takes every core.
            threads = settings.stream_embedding_threads if asynchronous else None
            self.index = DocumentIndex(
                settings.app_database_url,
                get_embedder(settings, threads=threads),
                db_attempts=STREAM_DB_ATTEMPTS if asynchronous else 8,
            )
            if asynchronous:  # before the query starts: its first micro-batch would otherwise load the model
                log.info("embedding model ready in %.1f s", self.index.embedder.warm())
            behind = None
            try:
                self.recover(None)
            except Exception as exc:
                if not (asynchronous and database_unavailable(exc)):
                    raise
                # The stream starts anyway (Bronze/Silver/Gold do not need Postgres); the worker catches up later.
                last = last_committed_batch(settings, epoch)
                behind = -1 if last is None else epoch_batch_key(epoch, last)
                log.error("Postgres is unavailable at start (%s); indexing waits for it", type(exc).__name__)
            if asynchronous:
                self.worker = IndexWorker(self._index_part, self._finish, self.recover, behind)
            if asynchronous and settings.enrich_diffs:  # the live stream only: replays keep the documents as they are
                self.enricher = Enricher(settings, self.index.replace_text, DiffRecords(tables(settings)))

    def recover(self, upto: int | None) -> int:
        """Make the index current up to batch key ``upto`` (None: the checkpoint's last commit): migrate the schema
        (idempotent; the stream may start before `up` migrated) and index the Gold batches beyond the progress."""
        upgrade(self.settings.app_database_url)
        return self.catch_up(upto)

    def catch_up(self, upto: int | None = None) -> int:
        """Index the Gold documents of batches after the index's recorded progress up to batch key ``upto`` (by
        default the last one Spark committed: a stream killed between the two); returns how many there were."""
        assert self.index is not None
        if upto is None:
            last_committed = last_committed_batch(self.settings, self.epoch)
            if last_committed is None:
                return 0
            upto = epoch_batch_key(self.epoch, last_committed)
        committed_key = upto
        if committed_key < 0:
            return 0
        # No progress yet (a first start, or an index that was disabled): every Gold batch is checked; documents
        # already indexed with the same content cost a lookup, not an embedding.
        done = self.index.progress(self.progress_name)
        done = -1 if done is None else done
        if done >= committed_key:
            return 0
        # A table object of its own: the index worker catches up while the batch thread writes through `self.delta`.
        gold = tables(self.settings).read(
            "gold", None, (ds.field("batch_id") > done) & (ds.field("batch_id") <= committed_key)
        )
        gold = gold.sort_by([("batch_id", "ascending")])
        if len(gold):
            log.info("indexing the %d Gold document(s) of batches Spark committed before this start", len(gold))
        # Gold holds documents only: the marks of what they reached (records after them that made no document are
        # counted as not indexed until a later batch's progress passes them).
        reached = partition_marks(gold) if len(gold) else {}
        for start in range(0, len(gold), CATCH_UP_CHUNK):
            chunk = gold.slice(start, CATCH_UP_CHUNK).to_pylist()
            last = start + CATCH_UP_CHUNK >= len(gold)
            self.index.index(chunk, progress=Progress(self.progress_name, committed_key, reached) if last else None)
        if not len(gold):
            self.index.set_progress(Progress(self.progress_name, committed_key))
        return len(gold)

    def __call__(self, kafka_rows, batch_id: int) -> None:
        began = time.perf_counter()
        batch_key = epoch_batch_key(self.epoch, batch_id)
        phases: dict[str, float] = {}
        with _phase(phases, "refine"):  # Spark reads the topic here: the source is lazy
            if self.refine_on_driver:
                kafka = kafka_columns(kafka_rows).toArrow()
                refined = refine_arrow(with_batch_columns(kafka, batch_key, datetime.now(UTC)))
            else:
                refined = refine_dataframe(bronze_rows(kafka_rows, batch_key)).toArrow()
        if self.planners_running:
            # The query has been planned and its first batch read: the Python workers that found, created and planned
            # its source idle from here on. Nothing else plans a query meanwhile: the query thread is here, and the
            # continuous query is its process' only one.
            self.planners_running = False
            log.info("stopped %d idle Python planner worker(s)", stop_planner_workers(kafka_rows.sparkSession))
        if len(refined) == 0:
            return
        with _phase(phases, "dedupe"):
            # Rows this very batch wrote before a crash are not duplicates of themselves.
            existing = self.seen.existing(refined, exclude_batch=batch_key)
            layers = split_layers(refined, existing, datetime.now(UTC))
        marks = partition_marks(refined)
        offsets = {partition: mark.offset for partition, mark in marks.items()}
        gold_hours = hour_counts(layers.gold["event_time"])
        result = BatchResult(
            batch_key,
            layers.counts,
            layers.quarantine_reasons,
            offsets,
            marks=marks,
            gold_hours=gold_hours,
            phases=phases,
        )
        rows = layers.gold.to_pylist() if self.index is not None else []
        written = WriteGate()
        if self.worker is not None:
            # The index thread embeds and writes to Postgres while the tables are written (`_index_part`).
            with _phase(phases, "queue"):  # waiting only when the index is `MAX_PENDING_ROWS` behind
                self.worker.submit(result, rows, written)
        try:
            result.delta_versions = write_layers(self.delta, layers, batch_key, phases)
        except BaseException:
            written.fail()
            raise
        self.seen.add(layers.silver)
        record_counts(layers)
        for partition, done in offsets.items():  # lag itself is measured off the batch path (`StreamStatus.lag`)
            STREAM_PROCESSED_OFFSET.labels(str(partition)).set(done)
        result.seconds = time.perf_counter() - began
        written.open()
        if self.worker is None:
            self._index_batch(result, rows, written)
            self._finish(result)
        STREAM_BATCH_DURATION.labels("total").observe(time.perf_counter() - began)
        STREAM_LAST_BATCH.set(time.time())

    def _index_batch(self, result: BatchResult, rows: list[dict], written: WriteGate) -> None:
        if self.index is None or not rows:
            written.wait()
            return
        with _phase(result.phases, "index"):
            # Not gated on Gold's transaction beyond this: a batch re-run after a crash re-applies it (upserts are
            # idempotent), and the recorded progress never passes a batch whose Gold rows are not committed.
            progress = Progress(self.progress_name, result.batch_key, result.marks)
            outcome = self.index.index(rows, progress=progress, before_write=written.wait)
        result.record_index(outcome, result.phases["index"])

    def _index_part(self, rows: list[dict], reached: tuple[int, Marks] | None, written: WriteGate) -> IndexResult:
        """One index transaction of the `IndexWorker`, as soon as its documents are embedded, while the batch's
        Delta writes go on (the worker waits for them, ``written``, before the batch counts as done): an edit is
        searchable ~0.04 s sooner at 20 events/s (measured on AVX-512; less than the appends' ~0.1 s, as the
        embedding then shares the two cores with them).
        Exactly once all the same: Spark re-runs a batch whose tables were not committed before a crash, and its
        upserts then find the documents unchanged (a recorded progress ahead of Gold only skips what the re-run
        indexes anyway)."""
        assert self.index is not None
        progress = None if reached is None else Progress(self.progress_name, *reached)
        outcome = self.index.index(rows, progress=progress)
        if self.enricher is not None:
            self.enricher.offer(rows)
        return outcome

    def _finish(self, result: BatchResult) -> None:
        # A slow batch says where its time went (refine includes reading the topic).
        level = logging.WARNING if result.seconds + result.phases.get("index", 0.0) > SLOW_BATCH_S else logging.INFO
        log.log(
            level,
            "batch %d: %s in %.2f s, indexed %s; seconds by phase %s",
            result.batch_key,
            result.counts,
            result.seconds,
            result.indexed,
            result.phases,
        )
        if self.on_batch is not None:
            self.on_batch(result)


@contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Time a stage of the batch: into ``phases`` (the batch's log line) and `STREAM_BATCH_DURATION`."""
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - began
        STREAM_BATCH_DURATION.labels(name).observe(seconds)
        phases[name] = round(seconds, 3)


def _warm_python_worker(spark) -> None:
    """Start Spark's Python worker (reused by the topic's reader) before the query does: the first micro-batch with
    events otherwise paid for it and for its imports (3-5 s here), and began the stream with a backlog."""
    began = time.perf_counter()
    # One partition, one worker: the idle workers of a second partition would stay (~115 MiB) and take turns.
    spark.range(1, numPartitions=1).mapInArrow(pass_through, "id long").collect()
    log.info("Spark's Python worker ready in %.1f s", time.perf_counter() - began)


def start_query(
    settings: Settings,
    *,
    available_now: bool = False,
    starting_offsets: str = "earliest",
    epoch: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
):
    """Start the streaming query (continuous, or availableNow) and return it."""
    if not available_now:  # started before any producer, the query waits for events instead of failing
        ensure_topic(settings)
    DeltaTables.ensure_bucket(settings)
    epoch = current_epoch(settings) if epoch is None else epoch
    checkpoint = checkpoint_root(settings) / f"epoch-{epoch}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(1, thread_name_prefix="batch-setup") as setup:
        # The index side (migrations, the model's load and warm-up, catching up) gets ready on a thread while
        # the JVM starts: neither needs the other, and each takes seconds.
        batch_ready = setup.submit(MedallionBatch, settings, epoch, on_batch, asynchronous=not available_now)
        spark = get_spark(settings, continuous=not available_now)
        listen_to_triggers(spark, SLOW_BATCH_S)
        if not available_now:
            _warm_python_worker(spark)
        foreach_batch = batch_ready.result()
    if foreach_batch.refine_on_driver:
        where = "on the driver"
    else:
        where = "in the cluster's executors" if settings.spark_on_cluster else "in Spark tasks"
    log.info("Spark master %s: micro-batches are refined %s", settings.spark_master_url, where)
    reader = (
        spark.readStream.format("streamrag_kafka")
        .option("bootstrap_servers", settings.bootstrap_servers)
        .option("topic", settings.topic)
        .option("startingOffsets", starting_offsets)
        .option("gapLedger", str(ledger_dir(settings.state_dir)))  # this platform's, whoever started the session
        .option("maxTasks", str(settings.spark_tasks))  # a large batch is read (and refined) on every core
        .option("trimIntervalSeconds", str(settings.memory_trim_interval_s))
        .option(
            "maxOffsetsPerTrigger",
            str(settings.replay_max_events_per_trigger if available_now else settings.stream_max_events_per_trigger),
        )
    )
    writer = (
        reader.load()
        .writeStream.foreachBatch(foreach_batch)
        .option("checkpointLocation", str(checkpoint))
        .queryName(f"medallion-epoch-{epoch}")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.stream_trigger_ms} milliseconds")
    return writer.start()
