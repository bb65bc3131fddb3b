"""The medallion pipeline: one Spark query from the raw topic through Bronze, Silver (+ quarantine) and Gold.

The same ``process_batch`` serves the long-running query (`streamrag stream`), bounded ``availableNow`` runs
(Dagster, tests, backfills) and replays; they share the checkpoint under <home>/checkpoints/medallion/epoch-N.
A new epoch (fresh checkpoint) is started only by `reprocess`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from streamrag_assets.documents.store import database_unavailable
from streamrag_assets.kafka.gaps import ledger_dir
from streamrag_assets.metrics import (
    INDEX_PAUSED,
    STREAM_BATCH_DURATION,
    STREAM_DROPPED,
    STREAM_IDLE_TRIGGERS,
    STREAM_LAST_BATCH,
    STREAM_PROCESSED_OFFSET,
    STREAM_QUARANTINED,
    STREAM_ROWS,
    STREAM_TRIGGER_PHASE,
)
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.dedupe import SeenEvents
from streamrag_assets.streaming.delta import LAYERS, DeltaTables
from streamrag_assets.streaming.transforms import (
    Layers,
    bronze_rows,
    kafka_columns,
    refine,
    refine_arrow,
    split_layers,
    with_batch_columns,
)

log = logging.getLogger(__name__)

APP_ID = "streamrag-medallion"
EPOCH_STRIDE = 1_000_000_000  # batch keys: epoch * stride + Spark batch id, unique across checkpoints
CATCH_UP_CHUNK = 2_000  # Gold rows per index transaction when catching up after a restart
SLOW_BATCH_S = 5.0  # a micro-batch slower than this is logged as a warning, with its phases
RECOVERY_PROBE_S = 5.0  # while Postgres is unavailable, how often the index tries to catch up
STREAM_DB_ATTEMPTS = 2  # tries of an index transaction in the stream before it pauses indexing (see IndexWorker)


@dataclass
class BatchResult:
    batch_key: int
    counts: dict[str, int]
    quarantine_reasons: dict[str, int]
    offsets: dict[int, int]
    delta_versions: dict[str, int | None] = field(default_factory=dict)  # set once the tables are written
    seconds: float = 0.0
    indexed: dict[str, int] = field(default_factory=dict)
    # Gold documents written per hour of event time (``HOUR_KEY_FORMAT``): the hourly partitions the batch touched.
    gold_hours: dict[str, int] = field(default_factory=dict)
    # Seconds per phase (refine, dedupe, queue, write_/maintain_<layer>, index, embed): where a slow batch's time went.
    phases: dict[str, float] = field(default_factory=dict)


HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"  # Dagster's hourly partition keys


def hour_counts(times: pa.ChunkedArray) -> dict[str, int]:
    """How many of ``times`` fall in each hour, keyed like the hourly partitions."""
    counts: dict[str, int] = {}
    for hour in pc.floor_temporal(times, unit="hour").to_pylist():
        if hour is not None:
            key = hour.strftime(HOUR_KEY_FORMAT)
            counts[key] = counts.get(key, 0) + 1
    return counts


class QueryAlreadyRunning(RuntimeError):
    pass


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


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The next offset per partition after the last micro-batch Spark committed (from the checkpoint files)."""
    epoch = current_epoch(settings)
    last = last_committed_batch(settings, epoch)
    if last is None:
        return {}
    lines = (checkpoint_root(settings) / f"epoch-{epoch}" / "offsets" / str(last)).read_text().strip().splitlines()
    return {int(p): int(o) for p, o in json.loads(lines[-1]).items()}


def checkpoint_root(settings: Settings) -> Path:
    return settings.state_dir / "checkpoints" / "medallion"


def current_epoch(settings: Settings) -> int:
    root = checkpoint_root(settings)
    epochs = [int(p.name.split("-")[1]) for p in root.glob("epoch-*")] if root.exists() else []
    return max(epochs, default=0)


def tables(settings: Settings) -> DeltaTables:
    return DeltaTables(settings.state_dir / "delta", settings.delta_maintain_every, settings.delta_retention_minutes)


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
        return delta.version(layer)

    return dict(zip(LAYERS, _WRITERS.map(write, LAYERS), strict=True))


def record_counts(layers: Layers) -> None:
    for reason in ("duplicate", "canary"):
        STREAM_DROPPED.labels(reason).inc(layers.counts[reason])
    for reason, n in layers.quarantine_reasons.items():
        STREAM_QUARANTINED.labels(reason.split(":")[0]).inc(n)


class _Gate:
    """Opened once a micro-batch's Delta writes are committed; ``wait`` raises if they failed."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._failed = False

    def open(self) -> None:
        self._event.set()

    def fail(self) -> None:
        self._failed = True
        self._event.set()

    def wait(self) -> None:
        self._event.wait()
        if self._failed:
            raise RuntimeError("the micro-batch's Delta writes failed")


class IndexWorker:
    """Indexes each micro-batch's Gold documents on a thread of its own, in batch order, while Spark already reads
    and refines the next batch: a document waits for one Spark pass instead of two, and embedding overlaps the
    broker and Delta round trips. At most one batch waits behind the one being indexed; beyond that ``submit``
    blocks, which holds Spark back (and lets its next batch grow) rather than queueing without bound.

    Spark commits a batch before its documents are indexed, so each index transaction records its batch key
    (`IndexProgress`); a stream restarted after a crash first indexes the committed Gold batches beyond it
    (`MedallionBatch.catch_up`).

    One layer down at a time: when Postgres is unavailable the worker pauses indexing instead of failing the query.
    Batches go on into Bronze, Silver and Gold; the worker notes the last one whose tables are written and every
    ``RECOVERY_PROBE_S`` calls ``recover`` with it, which indexes the Gold batches beyond the index's durable
    progress; once that succeeds, indexing goes on batch by batch. Any other failure stops the worker and fails the
    next micro-batch: the query stops, and the restarted stream resumes from the recorded progress.
    """

    def __init__(
        self,
        index_batch: Callable[[BatchResult, list[dict], _Gate], None],
        finish: Callable[[BatchResult], None],
        recover: Callable[[int], object],
        behind: int | None = None,
    ):
        self._index_batch = index_batch
        self._finish = finish
        self._recover = recover
        self._behind = behind  # the last batch key written to Gold but not indexed; None when in step
        self._next_probe = 0.0
        INDEX_PAUSED.set(0 if behind is None else 1)
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="index-worker", daemon=True)
        self._thread.start()

    @property
    def paused(self) -> bool:
        return self._behind is not None

    def submit(self, result: BatchResult, rows: list[dict], written: _Gate) -> None:
        while True:
            if self._failure is not None:
                raise RuntimeError(f"indexing a previous micro-batch failed: {self._failure}") from self._failure
            try:
                self._queue.put((result, rows, written), timeout=1.0)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._take(*item)
                if self._behind is not None and time.monotonic() >= self._next_probe:
                    self._try_recover()
            except BaseException as exc:
                key = item[0].batch_key if item is not None else self._behind
                log.exception("indexing batch %s failed; the stream stops and resumes from its progress", key)
                self._failure = exc
                return

    def _take(self, result: BatchResult, rows: list[dict], written: _Gate) -> None:
        if self._behind is None:
            try:
                self._index_batch(result, rows, written)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                written.wait()  # the batch's Gold rows are committed: recovery will find them
                self._pause(result.batch_key, exc)
        else:
            written.wait()
            self._behind = result.batch_key
        self._finish(result)

    def _pause(self, batch_key: int, exc: BaseException) -> None:
        log.error(
            "Postgres is unavailable (%s); indexing pauses at batch %d while Bronze, Silver and Gold go on, and "
            "catches up when it returns",
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            batch_key,
        )
        self._behind = batch_key
        self._next_probe = time.monotonic() + RECOVERY_PROBE_S
        INDEX_PAUSED.set(1)

    def _try_recover(self) -> None:
        assert self._behind is not None
        try:
            self._recover(self._behind)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            self._next_probe = time.monotonic() + RECOVERY_PROBE_S
            return
        log.info("Postgres is back: the index caught up to batch %d and goes on", self._behind)
        self._behind = None
        INDEX_PAUSED.set(0)


class MedallionBatch:
    """The ``foreachBatch`` function; keeps the Delta tables open between micro-batches. With ``asynchronous``
    (the continuous query) Gold documents are indexed by an `IndexWorker`, otherwise within the batch.

    The continuous query's micro-batches are small (tens of events at 50 events/s): Spark reads them and the driver
    refines them (`refine_arrow`), which skips a Spark task through a Python worker per batch (refine 0.45 -> 0.26 s
    per batch at 50 events/s, measured); so is a backlog after a restart. Bounded runs (`--available-now`, Dagster,
    replays) refine in Spark, on every core. Both run the same function (`refine_batches`) over the same Bronze rows."""

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
        self.refine_on_driver = asynchronous
        self.index = None
        self.worker: IndexWorker | None = None
        self.progress_name = f"medallion:{settings.topic}"
        if settings.index_enabled:
            from streamrag_assets.documents.store import DocumentIndex
            from streamrag_assets.index.embedder import get_embedder

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
                behind = -1 if last is None else epoch * EPOCH_STRIDE + last
                log.error("Postgres is unavailable at start (%s); indexing waits for it", type(exc).__name__)
            if asynchronous:
                self.worker = IndexWorker(self._index_batch, self._finish, self.recover, behind)

    def recover(self, upto: int | None) -> int:
        """Make the index current up to batch key ``upto`` (None: the checkpoint's last commit): migrate the schema
        (idempotent; the stream may start before `up` migrated) and index the Gold batches beyond the progress."""
        from streamrag_assets.documents.migrate import upgrade

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
            upto = self.epoch * EPOCH_STRIDE + last_committed
        committed_key = upto
        if committed_key < 0:
            return 0
        # No progress yet (a first start, or an index that was disabled): every Gold batch is checked; documents
        # already indexed with the same content cost a lookup, not an embedding.
        done = self.index.progress(self.progress_name)
        done = -1 if done is None else done
        if done >= committed_key:
            return 0
        import pyarrow.dataset as ds

        # A table object of its own: the index worker catches up while the batch thread writes through `self.delta`.
        gold = tables(self.settings).read(
            "gold", None, (ds.field("batch_id") > done) & (ds.field("batch_id") <= committed_key)
        )
        gold = gold.sort_by([("batch_id", "ascending")])
        if len(gold):
            log.info("indexing the %d Gold document(s) of batches Spark committed before this start", len(gold))
        for start in range(0, len(gold), CATCH_UP_CHUNK):
            chunk = gold.slice(start, CATCH_UP_CHUNK).to_pylist()
            last = start + CATCH_UP_CHUNK >= len(gold)
            self.index.index(chunk, progress=(self.progress_name, committed_key) if last else None)
        if not len(gold):
            self.index.set_progress(self.progress_name, committed_key)
        return len(gold)

    def __call__(self, kafka_rows, batch_id: int) -> None:
        began = time.perf_counter()
        batch_key = self.epoch * EPOCH_STRIDE + batch_id
        phases: dict[str, float] = {}
        with _phase(phases, "refine"):  # Spark reads the topic here: the source is lazy
            if self.refine_on_driver:
                kafka = kafka_columns(kafka_rows).toArrow()
                refined = refine_arrow(with_batch_columns(kafka, batch_key, datetime.now(UTC)))
            else:
                refined = refine(bronze_rows(kafka_rows, batch_key)).toArrow()
        if len(refined) == 0:
            return
        with _phase(phases, "dedupe"):
            # Rows this very batch wrote before a crash are not duplicates of themselves.
            existing = self.seen.existing(refined, exclude_batch=batch_key)
            layers = split_layers(refined, existing, datetime.now(UTC))
        offsets = _next_offsets(refined)
        gold_hours = hour_counts(layers.gold["event_time"])
        result = BatchResult(
            batch_key, layers.counts, layers.quarantine_reasons, offsets, gold_hours=gold_hours, phases=phases
        )
        rows = layers.gold.to_pylist() if self.index is not None else []
        written = _Gate()
        if self.worker is not None:
            # The index thread embeds while the tables are written, and writes to Postgres once they are.
            with _phase(phases, "queue"):  # waiting for the index thread to take the batch
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

    def _index_batch(self, result: BatchResult, rows: list[dict], written: _Gate) -> None:
        if self.index is None or not rows:
            written.wait()
            return
        with _phase(result.phases, "index"):
            # Not gated on Gold's transaction beyond this: a batch re-run after a crash re-applies it (upserts are
            # idempotent), and the recorded progress never passes a batch whose Gold rows are not committed.
            outcome = self.index.index(rows, progress=(self.progress_name, result.batch_key), before_write=written.wait)
        result.phases["embed"] = round(outcome.embed_seconds, 3)
        result.indexed = {
            k: getattr(outcome, k) for k in ("embedded", "upserted", "unchanged", "deleted", "dead_letters")
        }

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


def last_committed_batch(settings: Settings, epoch: int) -> int | None:
    """The id of the last micro-batch Spark committed in ``epoch``'s checkpoint."""
    commits = checkpoint_root(settings) / f"epoch-{epoch}" / "commits"
    ids = [int(p.name) for p in commits.glob("[0-9]*")] if commits.exists() else []
    return max(ids, default=None)


def _next_offsets(refined: pa.Table) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for partition, offset in zip(refined["partition"].to_pylist(), refined["offset"].to_pylist(), strict=True):
        offsets[partition] = max(offsets.get(partition, 0), offset + 1)
    return offsets


class _TriggerPhases:
    """Spark's listener interface, implemented over py4j: each trigger's progress report (``durationMs``:
    latestOffset, addBatch, walCommit, ...) becomes `STREAM_TRIGGER_PHASE` observations, where Spark's fixed cost per
    micro-batch goes. The report is read as one JSON string: pyspark's own listener converts it field by field over
    py4j, and its class look-ups scan the JVM's class path each time (measured: ~115 ms of JVM and ~50 ms of driver
    CPU per trigger, a sixth of a core at one trigger a second; 48% of the stream JVM's CPU samples)."""

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        progress = json.loads(event.progress().json())
        durations = progress.get("durationMs") or {}
        for phase, ms in durations.items():
            STREAM_TRIGGER_PHASE.labels(phase).observe(ms / 1000)
        if durations.get("triggerExecution", 0) > SLOW_BATCH_S * 1000:
            log.warning("micro-batch %d: a slow trigger, ms by phase %s", progress.get("batchId"), durations)

    def onQueryIdle(self, event) -> None:
        STREAM_IDLE_TRIGGERS.inc()

    def onQueryTerminated(self, event) -> None:
        pass

    class Java:
        implements = ["org.apache.spark.sql.streaming.PythonStreamingQueryListener"]


def _phase_listener():
    """`_TriggerPhases` as a listener `spark.streams.addListener` takes (it registers ``_jlistener``)."""
    from pyspark import SparkContext
    from pyspark.sql.streaming import StreamingQueryListener

    class PhaseListener(StreamingQueryListener):
        """Registers `_TriggerPhases` with the JVM; Spark calls that, never these methods."""

        def onQueryStarted(self, event) -> None:
            pass

        def onQueryProgress(self, event) -> None:
            pass

        def onQueryTerminated(self, event) -> None:
            pass

        @property
        def _jlistener(self):
            if not hasattr(self, "_wrapper"):
                self._wrapper = SparkContext._jvm.PythonStreamingQueryListenerWrapper(_TriggerPhases())  # type: ignore[union-attr]
            return self._wrapper

    return PhaseListener()


_LISTENING: set[int] = set()


def _warm_python_worker(spark) -> None:
    """Start Spark's Python worker (reused by the topic's reader) before the query does: the first micro-batch with
    events otherwise paid for it and for its imports (3-5 s here), and began the stream with a backlog."""
    from streamrag_assets.kafka.spark_source import pass_through

    began = time.perf_counter()
    spark.range(1).mapInArrow(pass_through, "id long").collect()  # the worker imports the reader's module
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
    from streamrag_assets.streaming.spark import get_spark

    if not available_now:  # started before any producer, the query waits for events instead of failing
        from streamrag_assets.kafka.admin import ensure_topic

        ensure_topic(settings)
    epoch = current_epoch(settings) if epoch is None else epoch
    checkpoint = checkpoint_root(settings) / f"epoch-{epoch}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(1, thread_name_prefix="batch-setup") as setup:
        # The index side (migrations, the model's load and warm-up, catching up) gets ready on a thread while
        # the JVM starts: neither needs the other, and each takes seconds.
        batch_ready = setup.submit(MedallionBatch, settings, epoch, on_batch, asynchronous=not available_now)
        spark = get_spark(settings)
        if id(spark) not in _LISTENING:
            spark.streams.addListener(_phase_listener())
            _LISTENING.add(id(spark))
        if not available_now:
            _warm_python_worker(spark)
        foreach_batch = batch_ready.result()
    reader = (
        spark.readStream.format("streamrag_kafka")
        .option("bootstrap_servers", settings.bootstrap_servers)
        .option("topic", settings.topic)
        .option("startingOffsets", starting_offsets)
        .option("gapLedger", str(ledger_dir(settings.state_dir)))  # this platform's, whoever started the session
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
