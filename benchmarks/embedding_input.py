"""Benchmark: what leaving a document's size and time out of the embedded text costs and gains (issue 25).

    .venv/bin/python -m benchmarks.embedding_input [--docs 2000]

On the replayed edits: tokens per document, documents embedded per second on one thread (int8), and how well each
kind of query finds its page (mean reciprocal rank of the first document of that page) with vectors of the whole text
and of `embedding_input`'s text. Queries: each page's title; an edit's comment (4+ words); "edits by <user> to <title>".
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np

from streamrag_assets.documents.store import embedding_input
from streamrag_assets.embedding.embedder import Embedder
from streamrag_tests.harness import gold_documents


def page_mrr(
    embedder: Embedder, queries: list[str], pages: list[str], vectors: np.ndarray, titles: np.ndarray
) -> float:
    scores = embedder.embed(queries) @ vectors.T
    ranks = [
        int((titles[np.argsort(-row)] == page).nonzero()[0][0]) + 1 for row, page in zip(scores, pages, strict=True)
    ]
    return float(np.mean(1 / np.array(ranks)))


def query_sets(docs: list[dict], limit: int = 300) -> dict[str, tuple[list[str], list[str]]]:
    sets: dict[str, tuple[list[str], list[str]]] = {"title": ([], []), "comment": ([], []), "user and title": ([], [])}
    for doc in docs:
        text, title = doc["text"], doc["title"]
        if title not in sets["title"][1]:
            sets["title"][0].append(title)
            sets["title"][1].append(title)
        comment = re.search(r'Comment: "(.*)"\.$', text)
        if comment and len(comment.group(1).split()) >= 4 and title not in sets["comment"][1]:
            sets["comment"][0].append(comment.group(1))
            sets["comment"][1].append(title)
        who = re.match(r'(.+?) (edited|created the page) "', text)
        if who and title not in sets["user and title"][1]:
            sets["user and title"][0].append(f"edits by {who.group(1)} to {title}")
            sets["user and title"][1].append(title)
    return {name: (q[:limit], p[:limit]) for name, (q, p) in sets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()
    docs = gold_documents(args.docs)
    whole = [d["text"] for d in docs]
    short = [embedding_input(t) for t in whole]
    embedder = Embedder(threads=1, int8=True)
    embedder.warm()
    if embedder.token_count("") is not None:
        for name, texts in (("whole text", whole), ("embedding_input", short)):
            tokens = [embedder.token_count(t) or 0 for t in texts]
            print(f"{name}: tokens per document mean {statistics.mean(tokens):.1f}, p50 {statistics.median(tokens)}")
    for _ in range(2):  # alternated, so that a change in the machine's speed hits both
        for name, texts in (("whole text", whole), ("embedding_input", short)):
            began = time.perf_counter()
            embedder.embed(texts[:500])
            print(f"{name}: {500 / (time.perf_counter() - began):.0f} documents/s on one thread")
    titles = np.array([d["title"] for d in docs])
    vectors = {"whole text": embedder.embed(whole), "embedding_input": embedder.embed(short)}
    for kind, (queries, pages) in query_sets(docs).items():
        found = {name: page_mrr(embedder, queries, pages, v, titles) for name, v in vectors.items()}
        print(f"{kind} queries ({len(queries)}): page MRR " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()))


if __name__ == "__main__":
    main()
