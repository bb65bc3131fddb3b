"""Diff enrichment (`enrichment.diffs`): the compare API's responses read, and the fetcher's etiquette (User-Agent,
rate limit, retries, cache) against a local server that answers as MediaWiki's action API does."""

from __future__ import annotations

import time

import pytest

from streamrag_assets.enrichment.diffs import (
    Diff,
    DiffFetcher,
    DiffUnavailable,
    compare_request,
    enriched_text,
    parse_compare,
)
from streamrag_assets.settings import Settings
from streamrag_tests.harness import compare_api_server

# The shape of a real `action=compare&prop=diff&formatversion=2` answer: a changed line (words in <del>/<ins>), a
# line only added, context around them.
BODY = (
    '<tr><td colspan="2" class="diff-lineno" id="mw-diff-left-l10">Line 10:</td>\n'
    '<td colspan="2" class="diff-lineno">Line 10:</td></tr>\n'
    '<tr><td class="diff-marker"></td><td class="diff-context diff-side-deleted"><div>The museum opened in 1901.</div>'
    '</td><td class="diff-marker"></td><td class="diff-context diff-side-added"><div>The museum opened in 1901.</div>'
    "</td></tr>\n"
    '<tr><td class="diff-marker" data-marker="\u2212"></td><td class="diff-deletedline diff-side-deleted"><div>'
    'It holds <del class="diffchange diffchange-inline">40</del> xylophones.</div></td>'
    '<td class="diff-marker" data-marker="+"></td><td class="diff-addedline diff-side-added"><div>'
    'It holds <ins class="diffchange diffchange-inline">52 bronze</ins> xylophones.</div></td></tr>\n'
    '<tr><td colspan="2" class="diff-side-deleted"></td><td class="diff-marker" data-marker="+"></td>'
    '<td class="diff-addedline diff-side-added"><div>A &lt;b&gt;new&lt;/b&gt; wing opened in 2026.</div></td></tr>\n'
)
ANSWER = {"compare": {"fromrevid": 100, "torevid": 101, "body": BODY}}
DIFF_URL = "https://en.wikipedia.org/w/index.php?diff=101&oldid=100"


def test_the_changed_words_and_whole_new_lines_are_read_from_the_diff() -> None:
    diff = parse_compare(ANSWER)
    assert diff == Diff(added=["52 bronze", "A <b>new</b> wing opened in 2026."], removed=["40"])
    assert parse_compare({"compare": {"*": BODY}}) == diff, "formatversion 1 keeps the body under '*'"
    with pytest.raises(DiffUnavailable, match="nosuchrevid"):
        parse_compare({"error": {"code": "nosuchrevid", "info": "There is no revision with ID 101."}})


def test_the_request_comes_from_the_diff_url_and_the_text_says_what_changed() -> None:
    url, params = compare_request(DIFF_URL)
    assert url == "https://en.wikipedia.org/w/api.php"
    assert params | {} == {
        "action": "compare",
        "fromrev": "100",
        "torev": "101",
        "prop": "diff",
        "format": "json",
        "formatversion": "2",
    }
    assert compare_request(DIFF_URL, "http://127.0.0.1:9/w/api.php")[0] == "http://127.0.0.1:9/w/api.php"
    assert compare_request("https://en.wikipedia.org/w/index.php?title=X&oldid=5") is None, "a page creation"
    text = enriched_text("Alice edited X.", Diff(["52 bronze"], ["40"]))
    assert text == 'Alice edited X. Added: "52 bronze". Removed: "40".'
    assert len(enriched_text("t", Diff(["word " * 200], []), max_chars=50)) < 70


@pytest.fixture
def compare_api():
    with compare_api_server() as fake:
        fake.default = BODY
        fake.diffs["404"] = None
        yield fake


def test_the_fetcher_names_itself_waits_its_turn_retries_and_asks_once(compare_api, tmp_path) -> None:
    settings = Settings(
        home=tmp_path, diff_api_url=compare_api.url, enrich_rate_limit="2/second", user_agent="test-ua/1"
    )
    fetcher = DiffFetcher(settings, sleep=lambda s: time.sleep(min(s, 0.05)))
    compare_api.fail_first = 1  # a 503 first: tried again
    assert fetcher.fetch(DIFF_URL).added == ["52 bronze", "A <b>new</b> wing opened in 2026."]
    assert len(compare_api.requests) == 2 and {r["agent"] for r in compare_api.requests} == {"test-ua/1"}
    fetcher.fetch(DIFF_URL)
    assert len(compare_api.requests) == 2, "the same diff is asked once"
    for new in (201, 202):  # the rate limit: no more than two requests in any second
        fetcher.fetch(f"https://en.wikipedia.org/w/index.php?diff={new}&oldid={new - 1}")
    times = [r["at"] for r in compare_api.requests]
    assert all(later - earlier >= 0.95 for earlier, later in zip(times, times[2:], strict=False))
    with pytest.raises(DiffUnavailable, match="nosuchrevid"):
        fetcher.fetch("https://en.wikipedia.org/w/index.php?diff=404&oldid=403")
    compare_api.fail_first = 5
    with pytest.raises(DiffUnavailable, match="HTTP 503"):
        fetcher.fetch("https://en.wikipedia.org/w/index.php?diff=301&oldid=300")
    fetcher.close()


def test_the_enricher_keeps_each_diff_beside_gold_and_a_failed_write_loses_none(compare_api, tmp_path) -> None:
    """Diffs are written to the ``gold_diffs`` Delta table in batches; a write that fails (a full disk, the object
    store away) is tried again with the next batch, and what is still held is written when the enricher stops."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from streamrag_assets.enrichment.diffs import DiffRecords, Enricher, stop_all
    from streamrag_assets.streaming.delta import DeltaTables

    class FailingOnce(DiffRecords):
        def __init__(self, delta: DeltaTables) -> None:
            super().__init__(delta)
            self.failures = 1

        def append(self, rows) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("No space left on device")
            super().append(rows)

    compare_api.default = BODY
    settings = Settings(home=tmp_path, diff_api_url=compare_api.url, enrich_rate_limit="100/second")
    records = FailingOnce(DeltaTables(tmp_path / "delta"))
    rewritten: dict[str, str] = {}
    enricher = Enricher(settings, lambda doc_id, text: rewritten.setdefault(doc_id, text) is not None, records)
    now = datetime.now(UTC)
    rows = [
        {"doc_id": f"enwiki:rev:{n}", "op": "upsert", "type": "edit", "text": f"Edit {n}.", "event_time": now}
        | {"diff_url": f"https://en.wikipedia.org/w/index.php?diff={n}&oldid={n - 1}"}
        for n in (501, 502, 503)
    ]
    enricher.offer(rows[:2])
    deadline = time.monotonic() + 20
    while len(rewritten) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    enricher._keep(force=True)  # the first write fails: both diffs are held
    assert records.failures == 0 and len(enricher.kept) == 2
    enricher.offer(rows[2:])
    while len(rewritten) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_all()  # as the process ends or replaces itself: what is held is written as the enricher stops
    assert not enricher._thread.is_alive()
    kept = records.for_documents(pa.array([r["doc_id"] for r in rows]))
    assert set(kept) == {r["doc_id"] for r in rows}
    assert all(diff.added == ["52 bronze", "A <b>new</b> wing opened in 2026."] for diff in kept.values())
    assert records.delta.read("gold_diffs").num_rows == 3, "each diff once"
