"""Keyword retrieval: BM25 over a tantivy index of the live documents, kept in step with Postgres.

Postgres stays the one source of truth. A follower thread reads what committed since its last snapshot (each row
carries the id of the transaction that last wrote it, and deleted rows are logged; see migration 0004), applies it
and commits: as soon as an index transaction's notification arrives (`wake`, called by the API's LISTEN connection,
`live.LiveFeed`), and every ``refresh_s`` in any case (writes that do not notify: retention, a lost notification).
Notifications that arrive during a refresh make one more. Hits are ids: the searcher reads their rows from Postgres
with the request's filters, so a stale entry can never show a deleted page. Until the first full read is done,
`ready` is False and keyword search uses Postgres' own full text instead.

Each poll reads the rows written since the oldest transaction still open at the previous snapshot (and skips those
it has applied): a transaction left open elsewhere in the cluster makes every poll re-read what was written since it
began. Cheap at this platform's write rate; worth knowing if one is ever left idle in a transaction for hours.

Kept on disk (``path``, `Settings.keyword_index_dir`): the index's segments are memory-mapped files - in the page
cache, which the kernel can reclaim, not the API's heap - and a restarted API resumes from the snapshot it last saved
(`STATE_FILE`) instead of reading the whole table again (minutes at millions of documents). It reads the table anew
when the saved state is for another database (`queries.database_identity`) or another schema of the index, or is
older than the removal log keeps (`retention.REMOVALS_KEPT`). Re-applying changes already in the index is harmless
(each is a delete and an add by doc_id), so the state is saved after the index commits. Without a path, or when
another process holds the directory, the index lives in memory and is read anew at each start.

A first read of a large table (`build_apart_from` documents or more, by Postgres' estimate) runs in a child process
that builds the index in the directory, saves its state and exits; the API then resumes from that state like a
restarted one. What a build of millions of rows leaves with a process (malloc's arenas, tantivy's merges) leaves with
the child: at 8.5M documents an API that built its index itself held 338 MiB of anonymous memory after a load, one
whose child built it 156 (at 1M, 173 and 174: there the in-process build left little; benchmarks/RESULTS.md). If the
child fails, the API builds in its own process as before.

Why not Postgres alone: a question's words are common across edits, and ranking full-text matches in Postgres cost
10-35 ms of its CPU per question at 100k documents (every match is read to rank it); the index answers the same
in about a millisecond (measured), with BM25 instead of cover density."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import tantivy
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from streamrag_api.schemas import Filters
from streamrag_assets.documents import queries
from streamrag_assets.documents.retention import REMOVALS_KEPT
from streamrag_assets.ingest.events import PROBE_WIKI
from streamrag_assets.metrics import (
    KEYWORD_INDEX_CAUGHT_UP,
    KEYWORD_INDEX_CHANGES,
    KEYWORD_INDEX_DOCUMENTS,
    KEYWORD_INDEX_REFRESH,
)
from streamrag_assets.runtime.memory import release_freed_memory

log = logging.getLogger(__name__)

TOKENIZER = "streamrag"
MAX_TERMS = 32
COMMON_SHARE = 0.5  # a question's word in more of the documents than this is left out of it (`KeywordIndex._telling`)
PROBE_PREFIX = f"{PROBE_WIKI}:"  # the canary's documents' ids (`refine.doc_id`)
# Raise when `_schema` or `analyzer` change: an index saved with another one is read anew.
SCHEMA_VERSION = 1
STATE_FILE = "streamrag-state.json"
LOCK_FILE = "streamrag.lock"
# A saved snapshot older than this is not resumed from: the removal log may have lost what was deleted since.
RESUMABLE_FOR_S = REMOVALS_KEPT.total_seconds() / 2
WRITER_HEAP = 50_000_000
STATE_SAVE_IDLE_S = 60.0  # with nothing to apply, the advanced snapshot is saved at most this often
# After applying at least this many changes at once (the first build, a long catch-up), what the reads freed is handed
# back to the kernel: at 4.25M documents the first build otherwise left ~90 MiB more with the API (measured).
RELEASE_AFTER_CHANGES = 20_000
# A first read of at least this many documents (Postgres' estimate) is done by a child process (see the module doc).
BUILD_APART_FROM = 100_000
# Words too common to say anything about relevance; left out of keyword queries (so that an OR of the question's
# words does not match, and rank, most of the table).
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "after",
        "before",
        "into",
        "over",
        "under",
        "than",
        "then",
        "there",
        "these",
        "those",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
        "we",
        "our",
        "us",
        "can",
        "could",
        "would",
        "should",
        "may",
        "might",
        "any",
        "all",
        "some",
        "no",
        "not",
    ]
)


def analyzer() -> tantivy.TextAnalyzer:
    """Words as runs of letters and digits, lower-cased (as Postgres' 'simple' configuration splits them)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    builder.add_text_field("body", tokenizer_name=TOKENIZER, index_option="freq")  # BM25 needs no positions
    for name in ("wiki", "lang", "type"):
        builder.add_text_field(name, tokenizer_name="raw")
    builder.add_integer_field("namespace", indexed=True)
    builder.add_boolean_field("bot", indexed=True)
    builder.add_boolean_field("probe", indexed=True)
    builder.add_integer_field("event_time", stored=True, indexed=True, fast=True)  # microseconds since the epoch
    return builder.build()


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _resume_point(saved: dict | None, database: str) -> tuple[str | None, str]:
    """The snapshot a saved state lets an index catch up from, or None and why not ("" for no state at all)."""
    if saved is None:
        return None, ""
    age = time.time() - float(saved.get("saved_at", 0))
    if saved.get("database") != database:
        return None, "is of another database"
    if not 0 <= age <= RESUMABLE_FOR_S:
        return None, f"was saved {age:.0f} s ago, past what the removal log keeps"
    if not isinstance(saved.get("snapshot"), str):
        return None, "has no snapshot"
    return saved["snapshot"], ""


def _saved_state(path: Path) -> dict | None:
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class KeywordSearch:
    """Searching a keyword index: all the API's /search asks of it. `KeywordIndex` keeps one following Postgres;
    `KeywordSearch.on_disk` opens one an API left on disk, to read only (no writer, no lock: that API may go on)."""

    def __init__(self) -> None:
        self.schema = _schema()
        self.analyzer = analyzer()
        self.index: tantivy.Index

    @staticmethod
    def on_disk(path: Path) -> KeywordSearch:
        reader = KeywordSearch()  # its queries are terms the analyzer made: the index needs no tokenizer to read
        reader.index = tantivy.Index(reader.schema, path=str(path), reuse=True)
        return reader

    def terms(self, question: str) -> list[str]:
        """The question's words as the index holds them, without stop words or repeats."""
        terms: list[str] = []
        for word in self.analyzer.analyze(question):
            if word not in STOP_WORDS and word not in terms:
                terms.append(word)
        return terms[:MAX_TERMS]

    def search(
        self, question: str, filters: Filters, limit: int, include_probes: bool = False
    ) -> list[tuple[str, datetime, float]]:
        """The ``limit`` best (doc_id, event_time, BM25 score) for the question's words, within the filters.

        tantivy scores every document a word matches (tantivy-py collects through a `MultiCollector`, which block-max
        WAND's pruning does not serve), ~5 ns a posting: the cost is the words' postings, so words found in most
        documents are left out (`_telling`), and without filters the query is the words alone — an exclusion clause
        adds a check per matching document (~30% at 0.8M documents), so the canary's probes are dropped by id after
        the search instead."""
        searcher = self.index.searcher()
        terms = self._telling(searcher, self.terms(question))
        if not terms:
            return []
        Occur, Query, schema = tantivy.Occur, tantivy.Query, self.schema  # noqa: N806 - tantivy's own names
        words = Query.boolean_query(
            [(Occur.Should, Query.term_query(schema, "body", term, index_option="freq")) for term in terms]
        )
        clauses = []
        for name in ("wiki", "lang", "type", "namespace"):
            values = getattr(filters, name)
            if values:
                clauses.append((Occur.Must, Query.const_score_query(Query.term_set_query(schema, name, values), 0.0)))
        if filters.since is not None or filters.until is not None:
            window = Query.range_query(
                schema,
                "event_time",
                tantivy.FieldType.Integer,
                _micros(filters.since) if filters.since else -(2**62),
                _micros(filters.until) if filters.until else 2**62,
                include_upper=False,
            )
            clauses.append((Occur.Must, Query.const_score_query(window, 0.0)))
        if filters.exclude_bots:
            clauses.append((Occur.MustNot, Query.term_query(schema, "bot", True)))
        if clauses and not include_probes:
            clauses.append((Occur.MustNot, Query.term_query(schema, "probe", True)))
        query = Query.boolean_query([(Occur.Must, words), *clauses]) if clauses else words
        drop_probes = not clauses and not include_probes
        wanted = limit
        while True:
            hits = searcher.search(query, wanted, count=False).hits
            out = []
            for score, address in hits:
                document = searcher.doc(address)
                doc_id = document["doc_id"][0]
                if drop_probes and doc_id.startswith(PROBE_PREFIX):
                    continue
                when = datetime.fromtimestamp(document["event_time"][0] / 1_000_000, UTC)
                out.append((doc_id, when, float(score)))
            if len(out) >= limit or len(hits) < wanted:  # enough, or all there is
                return out[:limit]
            wanted *= 2  # probes took places: look further down

    @staticmethod
    def _telling(searcher: tantivy.Searcher, terms: list[str]) -> list[str]:
        """``terms`` found in the index, without those in more than `COMMON_SHARE` of the documents unless that is all
        of them. Such a word ("edited", "bytes": in most documents' text) adds under ln 2 of BM25's idf to a score,
        next to 5-15 for a rare one, but costs the most: its postings are most of the index. At 9.6M documents
        leaving them out kept 99.9% of the top ten's BM25 score (benchmarks/RESULTS.md). As Lucene's former
        `cutoff_frequency`, without its second pass."""
        found = {term: searcher.doc_freq("body", term) for term in terms}
        found = {term: count for term, count in found.items() if count}  # a word in no document finds nothing
        telling = [term for term, count in found.items() if count <= COMMON_SHARE * searcher.num_docs]
        return telling or list(found)


class KeywordIndex(KeywordSearch):
    def __init__(
        self,
        engine: Engine,
        refresh_s: float = 2.0,
        path: Path | None = None,
        build_apart_from: int = BUILD_APART_FROM,
        locked: bool = False,
    ) -> None:
        """``locked``: the directory's lock is held for this index by its parent process (a build apart)."""
        self.engine = engine
        self.refresh_s = refresh_s
        self.build_apart_from = build_apart_from
        self._locked_by_parent = locked
        self._child: subprocess.Popen | None = None
        super().__init__()
        self.path: Path | None = None  # where the index and its state are kept; None: in memory
        self._lock: IO | None = None  # the directory's lock file, held while the index writes there
        self.saved: dict | None = None  # the state saved with the index on disk, until the first refresh
        self.index, writer = self._open(path)
        self.writer: tantivy.IndexWriter | None = writer
        self.snapshot: str | None = None  # the Postgres snapshot the index reflects
        self.database: str | None = None  # which database that snapshot is of
        self._state_saved_at = 0.0
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self, path: Path | None) -> tuple[tantivy.Index, tantivy.IndexWriter]:
        if path is not None:
            try:
                return self._open_on_disk(path)
            except (OSError, ValueError) as exc:  # another API holds it, or no disk
                log.warning("keyword index kept in memory: %s cannot be used (%s)", path, exc)
                if self._lock is not None:
                    self._lock.close()
                    self._lock = None
        return self._with_writer(tantivy.Index(self.schema))

    def _open_on_disk(self, path: Path) -> tuple[tantivy.Index, tantivy.IndexWriter]:
        path.mkdir(parents=True, exist_ok=True)
        if not self._locked_by_parent:
            # Held for the process' life (the kernel lets go when it dies, even by SIGKILL): one API per directory.
            lock = (path / LOCK_FILE).open("a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise OSError("another process is using it") from None
            self._lock = lock
        saved = _saved_state(path)
        if saved is not None and saved.get("schema") == SCHEMA_VERSION:
            try:
                opened = self._with_writer(tantivy.Index(self.schema, path=str(path), reuse=True))
                self.path, self.saved = path, saved
                return opened
            except ValueError as exc:
                log.warning("keyword index at %s cannot be opened (%s); building it again", path, exc)
        for entry in path.iterdir():  # no state, another schema, or unreadable: start from nothing
            if entry.name != LOCK_FILE:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        opened = self._with_writer(tantivy.Index(self.schema, path=str(path), reuse=False))
        self.path = path
        return opened

    def _with_writer(self, index: tantivy.Index) -> tuple[tantivy.Index, tantivy.IndexWriter]:
        index.register_tokenizer(TOKENIZER, analyzer())
        return index, index.writer(heap_size=WRITER_HEAP, num_threads=1)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    # --- following Postgres -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="keyword-index", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something committed in Postgres: read it now (thread-safe; wakes the follower once however often called)."""
        self._woken.set()

    def stop(self) -> None:
        """Stop following Postgres and let go of the directory (the index still answers searches)."""
        self._stop.set()
        self._woken.set()
        child = self._child
        if child is not None:
            child.kill()
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():
                return  # a refresh still holds the writer
        if self._lock is not None:
            if self.writer is not None:
                self.writer.wait_merging_threads()  # drops the writer and tantivy's lock with it
            self._lock.close()
            self._lock = None

    def _follow(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._woken.clear()  # before the read: what commits during it wakes the next one
            try:
                self.refresh()
                if failing:
                    log.info("keyword index following Postgres again")
                failing = False
            # Postgres down or restarting, or tantivy unable to write (a full disk): keep the index, retry from the
            # snapshot.
            except (DBAPIError, OSError, ValueError) as exc:
                if not failing:
                    reason = (
                        f"cannot read Postgres ({type(exc.orig or exc).__name__})"
                        if isinstance(exc, DBAPIError)
                        else f"cannot write its segments ({exc})"
                    )
                    log.warning("keyword index %s; retrying", reason)
                failing = True
                self._stop.wait(2)
            self._woken.wait(self.refresh_s)

    def refresh(self) -> int:
        """Apply what committed since the last snapshot (everything, the first time, unless the index on disk can
        resume from its saved one); the changes applied."""
        began = time.perf_counter()
        previous = self.snapshot
        built = self._build_apart() if previous is None else 0
        if self._stop.is_set() and previous is None:
            return 0  # stopped while a child built: nothing more to do
        if self.writer is None:  # the last one died: a new one (tantivy's lock is free once the old one is gone)
            self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=1)
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all the reads
            try:
                with conn.begin():
                    snapshot = queries.current_snapshot(conn)
                    if previous is None:
                        self.database = queries.database_identity(conn)
                        resume_from = self._resumable(self.database)
                        if resume_from is not None:
                            changes = self._catch_up(conn, resume_from)
                            log.info("keyword index resumed from its saved snapshot: %d changes since", changes)
                        else:
                            changes = self._rebuild(conn)
                    else:
                        changes = self._catch_up(conn, previous)
            except BaseException:
                self._drop_pending()  # half a change set: drop it, read it again next time
                raise
        try:
            if changes or previous is None:  # the first commit makes even an empty table's index ready to search
                self.writer.commit()
                self.index.reload()
                KEYWORD_INDEX_DOCUMENTS.set(self.index.searcher().num_docs)
        except BaseException:
            self._drop_pending()
            raise
        self.snapshot = snapshot
        self._save_state(force=bool(changes) or previous is None)
        if changes >= RELEASE_AFTER_CHANGES:
            released = release_freed_memory()
            log.info("keyword index: %d changes applied; %.0f MiB they freed handed back", changes, released)
        KEYWORD_INDEX_CAUGHT_UP.set_to_current_time()
        KEYWORD_INDEX_REFRESH.observe(time.perf_counter() - began)
        return built + changes

    def _drop_pending(self) -> None:
        """Forget what was added since the last commit. A write tantivy could not make (a full disk) kills its
        writer, which then refuses even this: it is dropped, and the next refresh takes a new one."""
        if self.writer is None:
            return
        try:
            self.writer.rollback()
        except ValueError as exc:
            log.warning("keyword index writer lost (%s); a new one is taken at the next refresh", exc)
            self.writer = None

    def _resumable(self, database: str) -> str | None:
        """The saved snapshot to catch up from, if the index on disk holds this database up to a recent one."""
        saved, self.saved = self.saved, None
        snapshot, why_not = _resume_point(saved, database)
        if why_not:
            log.info("keyword index on disk %s; reading the table anew", why_not)
        return snapshot

    # --- a first build in a child process ---------------------------------------------------------------------

    def _build_apart(self) -> int:
        """Before the first refresh of an index on disk that must read a large table whole: let a child process
        build it there; the documents it read (0 when there was nothing to build apart, or the child failed: the
        refresh then reads the table itself)."""
        if self.path is None or self._locked_by_parent:
            return 0
        with self.engine.connect() as conn:
            if _resume_point(self.saved, queries.database_identity(conn))[0] is not None:
                return 0  # the first refresh resumes: nothing to read whole
            estimate = queries.estimated_documents(conn)
        if estimate < self.build_apart_from:
            return 0
        if self.writer is not None:  # the child takes tantivy's writer lock
            self.writer.wait_merging_threads()
            self.writer = None
        request = {"url": self.engine.url.render_as_string(hide_password=False), "path": str(self.path)}
        log.info("keyword index: a child process reads the table (~%d documents) into %s", estimate, self.path)
        began = time.monotonic()
        documents: int | None = None
        try:
            # Logs go where this process' do (stderr); the request (with the database password) goes by stdin.
            self._child = subprocess.Popen(  # noqa: S603 - this interpreter, our module
                [sys.executable, "-m", "streamrag_api.keyword_builder", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            out, _ = self._child.communicate(json.dumps(request))
            if self._child.returncode == 0:
                documents = int(json.loads(out)["documents"])
            elif not self._stop.is_set():
                log.warning(
                    "keyword index: the child build failed (exit %s); reading the table here", self._child.returncode
                )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("keyword index: no child build (%s); reading the table here", exc)
        finally:
            self._child = None
        # What the child left in the directory: a built index and its state, or (if it failed) whatever it got to.
        self.index, self.writer = self._with_writer(tantivy.Index(self.schema, path=str(self.path), reuse=True))
        self.saved = _saved_state(self.path)
        if documents is None:
            return 0
        log.info("keyword index: the child read %d documents in %.1f s", documents, time.monotonic() - began)
        KEYWORD_INDEX_CHANGES.labels("read").inc(documents)
        return documents

    def _save_state(self, force: bool) -> None:
        """After a commit: the snapshot the index on disk now reflects (written whole, then renamed into place)."""
        now = time.time()
        if self.path is None or (not force and now - self._state_saved_at < STATE_SAVE_IDLE_S):
            return
        state = {"schema": SCHEMA_VERSION, "database": self.database, "snapshot": self.snapshot, "saved_at": now}
        partial = self.path / f"{STATE_FILE}.partial"
        try:
            partial.write_text(json.dumps(state))
            os.replace(partial, self.path / STATE_FILE)
            self._state_saved_at = now
        except OSError as exc:  # a full disk: the index still serves; a restart reads the table anew
            log.warning("keyword index state not saved (%s)", exc)

    def _rebuild(self, conn) -> int:
        writer = self.writer
        assert writer is not None, "refreshes take a writer first"
        writer.delete_all_documents()
        count = 0
        for row in queries.keyword_index_documents(conn):
            writer.add_document(self._document(row))
            count += 1
        log.info("keyword index built from %d documents", count)
        KEYWORD_INDEX_CHANGES.labels("read").inc(count)
        return count

    def _catch_up(self, conn, previous: str) -> int:
        writer = self.writer
        assert writer is not None, "refreshes take a writer first"
        changes = 0
        for doc_id in queries.removed_since(conn, previous):
            if doc_id == queries.EVERY_DOCUMENT:
                writer.delete_all_documents()
            else:
                writer.delete_documents_by_term("doc_id", doc_id)
            changes += 1
        KEYWORD_INDEX_CHANGES.labels("removed").inc(changes)
        # Removals first: the rows read next are each document's state as of this snapshot.
        for row in queries.written_since(conn, previous):
            writer.delete_documents_by_term("doc_id", row.doc_id)
            if not row.deleted:
                writer.add_document(self._document(row))
            KEYWORD_INDEX_CHANGES.labels("tombstoned" if row.deleted else "written").inc()
            changes += 1
        return changes

    @staticmethod
    def _document(row) -> tantivy.Document:
        return tantivy.Document(
            doc_id=row.doc_id,
            body=f"{row.title or ''} {row.text or ''}",
            wiki=row.wiki,
            lang=row.lang,
            type=row.type,
            namespace=row.namespace,
            bot=bool(row.bot),
            probe=bool(row.probe),
            event_time=_micros(row.event_time),
        )


# --- the child's side of a build apart (`streamrag_api.keyword_builder` runs it) -----------------------------------
def build_in_child(request: dict) -> int:
    """Build the index in ``request["path"]`` from ``request["url"]``'s table (the parent holds the directory's lock)
    and save its state; the documents read."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [build] %(message)s")
    engine = create_engine(request["url"], pool_size=1, connect_args={"application_name": "streamrag-keyword-build"})
    try:
        index = KeywordIndex(engine, path=Path(request["path"]), locked=True)
        if index.path is None:
            raise OSError(f"{request['path']} cannot be used")
        documents = index.refresh()
        assert index.writer is not None, "a refresh leaves a writer"
        index.writer.wait_merging_threads()
        return documents
    finally:
        engine.dispose()
