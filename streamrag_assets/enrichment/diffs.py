"""What an edit changed: its diff's added and removed text from the wiki's compare API, added to the indexed document
(`STREAMRAG_ENRICH_DIFFS`, off by default).

An edit event carries its diff URL (``https://<wiki>/w/index.php?diff=NEW&oldid=OLD``); the wiki's action API
answers ``action=compare&fromrev=OLD&torev=NEW&prop=diff`` with the diff as HTML table rows, whose
``diff-addedline`` / ``diff-deletedline`` cells hold the lines and ``<ins>`` / ``<del>`` the changed words. The
fragments are added to the document's text ("Added: … Removed: …") and the document is embedded again, so search and
/answer can quote what changed.

Wikimedia's API etiquette is kept: the configured User-Agent, requests one at a time and at most
`Settings.enrich_rate_limit`, retried with backoff on failures and 429/5xx, each diff fetched once (a cache). A diff
that cannot be had leaves the document as it was and is counted (`streamrag_enrich_diffs_total`).

Each diff fetched is also kept beside Gold, in the ``gold_diffs`` Delta table (`DiffRecords`, written in batches by
the enricher's thread): a reindex or a rebuild of pgvector from Gold gives the documents their enriched text again
without asking the wikis a second time.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow as pa
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from streamrag_assets.metrics import ENRICH_DIFFS
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

if TYPE_CHECKING:
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

CACHE_SIZE = 5_000
DIFFS_TABLE = "gold_diffs"
KEEP_ROWS = 200  # diffs written to `DIFFS_TABLE` at once at most (or after `Settings.enrich_keep_every_s`)
QUEUE_SIZE = 1_000  # documents waiting for their diff; more are skipped (counted), not queued
FRAGMENT_CHARS = 300


@dataclass(frozen=True)
class Diff:
    added: list[str]
    removed: list[str]

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


class DiffUnavailable(RuntimeError):
    pass


class _DiffCells(HTMLParser):
    """The text of the added and deleted cells of a diff table; of a changed line, its changed words only."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.added: list[str] = []
        self.removed: list[str] = []
        self._cell: str | None = None  # "added" / "removed" inside such a cell
        self._line: list[str] = []
        self._changed: list[str] = []
        self._in_change = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "td" and ("diff-addedline" in classes or "diff-deletedline" in classes):
            self._cell = "added" if "diff-addedline" in classes else "removed"
            self._line, self._changed = [], []
        elif self._cell and tag in ("ins", "del"):
            self._in_change += 1
            self._changed.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._cell and tag in ("ins", "del"):
            self._in_change = max(0, self._in_change - 1)
        elif self._cell and tag == "td":
            words = "".join(self._changed) if "".join(self._changed).strip() else "".join(self._line)
            text = " ".join(words.split())
            if text:
                (self.added if self._cell == "added" else self.removed).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._line.append(data)
            if self._in_change:
                self._changed.append(data)


def parse_compare(body: dict[str, Any]) -> Diff:
    """The added and removed fragments of a compare API response (``formatversion`` 1 or 2)."""
    compare = body.get("compare")
    if not isinstance(compare, dict):
        error = body.get("error", {})
        raise DiffUnavailable(
            f"no diff: {error.get('code', 'unexpected response') if isinstance(error, dict) else error}"
        )
    html = compare.get("body", compare.get("*"))
    if not isinstance(html, str):
        raise DiffUnavailable("no diff: the response has no body")
    cells = _DiffCells()
    cells.feed(html)
    cells.close()
    return Diff(cells.added, cells.removed)


def compare_request(diff_url: str, api_url: str | None = None) -> tuple[str, dict[str, str]] | None:
    """The compare API's URL and parameters for an edit's diff URL (None: not a diff between two revisions)."""
    parts = urlsplit(diff_url)
    query = parse_qs(parts.query)
    new, old = query.get("diff", [""])[0], query.get("oldid", [""])[0]
    if not (new.isdigit() and old.isdigit()) or parts.scheme not in ("http", "https"):
        return None
    url = api_url or f"{parts.scheme}://{parts.netloc}/w/api.php"
    params = {"action": "compare", "fromrev": old, "torev": new, "prop": "diff", "format": "json"}
    return url, params | {"formatversion": "2"}


def enriched_text(text: str, diff: Diff, max_chars: int = FRAGMENT_CHARS) -> str:
    """The document's text with what the edit added and removed, each side cut at ``max_chars``."""

    def side(fragments: list[str]) -> str:
        joined = " … ".join(fragments)
        return joined if len(joined) <= max_chars else joined[: max_chars - 1].rstrip() + "…"

    said = [
        f'Added: "{side(diff.added)}".' if diff.added else "",
        f'Removed: "{side(diff.removed)}".' if diff.removed else "",
    ]
    return " ".join([text, *[s for s in said if s]])


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class DiffFetcher:
    """Fetches diffs one at a time, at most `Settings.enrich_rate_limit`, retried, cached."""

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.http = httpx.Client(headers={"User-Agent": settings.user_agent}, timeout=settings.enrich_timeout_s)
        self.limits = parse_many(settings.enrich_rate_limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.cache: OrderedDict[tuple[str, str, str], Diff] = OrderedDict()
        self._sleep = sleep

    def fetch(self, diff_url: str) -> Diff:
        request = compare_request(diff_url, self.settings.diff_api_url)
        if request is None:
            raise DiffUnavailable(f"not a diff between two revisions: {diff_url}")
        url, params = request
        key = (url, params["fromrev"], params["torev"])
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=1, max=8),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            response = retrying(self._get, url, params)
            diff = parse_compare(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            reason = (
                f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
            )
            raise DiffUnavailable(f"the compare API failed: {reason}") from None
        self.cache[key] = diff
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return diff

    def _get(self, url: str, params: dict[str, str]) -> httpx.Response:
        while not all(self.limiter.hit(item, "compare") for item in self.limits):
            self._sleep(0.05)
        response = self.http.get(url, params=params)
        response.raise_for_status()
        return response

    def close(self) -> None:
        self.http.close()


class DiffRecords:
    """The ``gold_diffs`` table: each enriched document's diff, appended in batches, read back by doc id."""

    def __init__(self, delta: DeltaTables) -> None:
        self.delta = delta

    def append(self, rows: list[dict[str, Any]]) -> None:
        rows_table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMAS[DIFFS_TABLE])
        self.delta.write_once(DIFFS_TABLE, rows_table, "diff-enricher", time.time_ns())
        if self.delta.maintenance_due(DIFFS_TABLE):
            self.delta.maintain(DIFFS_TABLE)

    def for_documents(self, doc_ids: pa.Array, window: ds.Expression | None = None) -> dict[str, Diff]:
        """The newest diff kept of each of ``doc_ids`` that has one; only diffs of edits within ``window`` (a dataset
        filter on ``event_time``, the documents' own) are read."""
        found: dict[str, tuple[datetime, Diff]] = {}
        for row in self.delta.rows_with(DIFFS_TABLE, "doc_id", doc_ids, filter_expr=window).to_pylist():
            kept = found.get(row["doc_id"])
            if kept is None or row["fetched_at"] > kept[0]:
                found[row["doc_id"]] = (row["fetched_at"], Diff(row["added"] or [], row["removed"] or []))
        return {doc_id: diff for doc_id, (_, diff) in found.items()}


_RUNNING: set[Enricher] = set()  # the process' enrichers not yet stopped (`stop_all`)


def stop_all() -> None:
    """Stop every enricher of this process, each writing the diffs it holds beside Gold. Run at exit, and by the
    stream before it replaces itself for a bounded run (`os.execv` runs no exit handlers)."""
    for enricher in list(_RUNNING):
        enricher.stop()


atexit.register(stop_all)


class Enricher:
    """A thread of the stream's process: takes indexed edit documents (`offer`), fetches their diffs, rewrites
    their text and vector (``replace_text``) and keeps each diff (``records``, in batches). It never holds the live
    path up: a full queue skips documents."""

    def __init__(
        self, settings: Settings, replace_text: Callable[[str, str], bool], records: DiffRecords | None = None
    ) -> None:
        self.fetcher = DiffFetcher(settings)
        self.replace_text = replace_text
        self.records = records
        self.kept: list[dict[str, Any]] = []  # diffs not yet written to the records
        self._keeping = threading.Lock()  # the thread and `stop` both write what is kept: each diff once
        self.kept_since = time.monotonic()
        self.keep_every_s = settings.enrich_keep_every_s
        self.max_chars = settings.enrich_max_chars
        self.waiting: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="diff-enricher", daemon=True)
        self._thread.start()
        _RUNNING.add(self)

    def offer(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            if row.get("op") != "upsert" or row.get("type") != "edit" or not row.get("diff_url"):
                continue
            try:
                self.waiting.put_nowait(row)
            except queue.Full:
                ENRICH_DIFFS.labels("skipped").inc()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._keep(force=False)
            try:
                row = self.waiting.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                diff = self.fetcher.fetch(row["diff_url"])
                if diff.empty:
                    ENRICH_DIFFS.labels("empty").inc()
                    continue
                written = self.replace_text(row["doc_id"], enriched_text(row["text"], diff, self.max_chars))
                ENRICH_DIFFS.labels("enriched" if written else "gone").inc()
                if written and self.records is not None:
                    record = {
                        "doc_id": row["doc_id"],
                        "event_time": row["event_time"],
                        "added": diff.added,
                        "removed": diff.removed,
                        "fetched_at": datetime.now(UTC),
                    }
                    with self._keeping:
                        if not self.kept:
                            self.kept_since = time.monotonic()
                        self.kept.append(record)
            except DiffUnavailable as exc:
                ENRICH_DIFFS.labels("failed").inc()
                log.info("document %s keeps its text: %s", row["doc_id"], exc)
            except Exception:  # the database, the model: counted, logged, and the next document goes on
                ENRICH_DIFFS.labels("failed").inc()
                log.exception("enriching document %s failed", row["doc_id"])

    def _keep(self, force: bool) -> None:
        """Write the diffs kept so far to the records when there are `KEEP_ROWS` of them, the oldest has waited
        ``keep_every_s``, or ``force``. A failed write is logged and tried again with the next ones (up to
        `QUEUE_SIZE` diffs are held; older ones are then dropped: their documents keep their enriched text)."""
        if not self._keeping.acquire(timeout=30):  # a write that hangs (the object store away) holds no stop up
            log.warning("diffs are still being written to %s; leaving them to the enricher", DIFFS_TABLE)
            return
        try:
            if not self.kept or self.records is None:
                return
            if not (force or len(self.kept) >= KEEP_ROWS or time.monotonic() - self.kept_since >= self.keep_every_s):
                return
            self.records.append(self.kept)
            self.kept = []
        except Exception:
            log.exception("keeping %d diffs in %s failed; trying again later", len(self.kept), DIFFS_TABLE)
            self.kept = self.kept[-QUEUE_SIZE:]
            self.kept_since = time.monotonic()
        finally:
            self._keeping.release()

    def stop(self) -> None:
        _RUNNING.discard(self)
        self._stop.set()
        self._thread.join(timeout=10)
        self._keep(force=True)
        self.fetcher.close()
