"""Answer quality, measured (issue 28): the labelled questions of ``benchmarks/eval/answers.yaml`` asked of /answer.

    make eval-answers                                    # ~3 minutes
    PYTHONPATH=. .venv/bin/python -m benchmarks.eval_answers --out result.json

On the embedded servers (object store, broker, Postgres) started for the run: the stream and the API as `up` runs
them; the bundled recording's 100 events and the file's crafted edits (other languages, an earlier and a current
edit of one page, pages edited and then deleted) are produced to the topic as the ingest process would. Once every
document is indexed (and the deleted pages' documents tombstoned), each question goes to /answer, with ``filters``
for the time-bounded ones. Reported, overall and per kind of question:

- citation precision: of the documents the answers cite, the share the labels allow (``expect`` or ``also``);
  citations on a question whose right answer is "I don't know" all count as wrong;
- citation recall: of the documents the labels say an answer must cite, the share cited;
- "I don't know" accuracy: the share of questions where the answer said it did not know exactly when it should.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text

from benchmarks.cpu import cpu_kind
from streamrag_api.answer import DONT_KNOW
from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.runtime.api import api_process
from streamrag_assets.runtime.stream import stream_process
from streamrag_tests.harness import (
    RECORDING,
    EmbeddedStack,
    deletion,
    free_port,
    isolated_settings,
    produce,
    recentchange,
    release,
    running,
    scratch_dir,
    wait_until,
)

QUESTIONS = Path(__file__).parent / "eval" / "answers.yaml"


def recording_events(now: datetime) -> list[dict]:
    """The bundled recording as it was recorded (its revision ids name its documents), happening now."""
    events = []
    for line in RECORDING.read_text().splitlines():
        event = json.loads(line)
        event["meta"] |= {"id": str(uuid.uuid4()), "dt": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        event["timestamp"] = int(now.timestamp())
        events.append(event)
    return events


def crafted_event(edit: dict[str, Any], now: datetime) -> dict:
    """An edit of ``edit['title']`` on its wiki (enwiki unless given), ``hours_ago`` before now."""
    wiki = edit.get("wiki", "enwiki")
    lang = wiki.removesuffix("wiki")
    server = f"{lang}.wikipedia.org"
    when = now - timedelta(hours=edit.get("hours_ago", 0))
    page = f"https://{server}/wiki/{edit['title'].replace(' ', '_')}"
    event = recentchange(edit["title"], edit["comment"], wiki=wiki, server_name=server, server_url=f"https://{server}")
    revision = event["revision"]
    event["meta"] |= {"domain": server, "uri": page, "dt": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    event |= {
        "title_url": page,
        "timestamp": int(when.timestamp()),
        "notify_url": f"https://{server}/w/index.php?diff={revision['new']}&oldid={revision['old']}",
    }
    return event


def doc_id(event: dict) -> str:
    return f"{event['wiki']}:rev:{event['revision']['new']}"


def document_states(url: str, ids: list[str]) -> dict[str, bool]:
    """doc id -> deleted (tombstoned), for those of ``ids`` in the documents table."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT doc_id, deleted FROM documents WHERE doc_id = ANY(:ids)"), {"ids": ids})
            return {row.doc_id: row.deleted for row in rows}
    finally:
        engine.dispose()


@dataclass
class Tally:
    cited: int = 0
    cited_allowed: int = 0
    expected: int = 0
    expected_cited: int = 0
    questions: int = 0
    idk_right: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict[str, float | int | None]:
        return {
            "questions": self.questions,
            "citation_precision": round(self.cited_allowed / self.cited, 3) if self.cited else None,
            "citation_recall": round(self.expected_cited / self.expected, 3) if self.expected else None,
            "idk_accuracy": round(self.idk_right / self.questions, 3) if self.questions else None,
        }


@dataclass
class Outcome:
    question: str
    kind: str
    expected: list[str]
    allowed: list[str]
    cited: list[str]
    said_idk: bool
    answer: str
    retrieved: list[tuple[str, float | None]] = field(default_factory=list)  # (doc id, similarity), best first
    tally: Tally = field(default_factory=Tally)


def judge(item: dict[str, Any], names: dict[str, str], reply: dict[str, Any]) -> Outcome:
    expected = [names.get(ref, ref) for ref in item.get("expect", [])]
    allowed = expected + [names.get(ref, ref) for ref in item.get("also", [])]
    cited = [citation["doc_id"] for citation in reply["citations"]]
    said_idk = reply["answer"].startswith(DONT_KNOW.split(":")[0]) and not cited
    tally = Tally(
        cited=len(cited),
        cited_allowed=len([doc for doc in cited if doc in allowed]),
        expected=len(expected),
        expected_cited=len([doc for doc in expected if doc in cited]),
        questions=1,
        idk_right=int(said_idk == (not expected)),
    )
    retrieved = [(hit["doc_id"], hit["similarity"]) for hit in (reply.get("debug") or {}).get("retrieved", [])]
    return Outcome(
        item["question"], item["kind"], expected, allowed, cited, said_idk, reply["answer"], retrieved, tally
    )


def run(questions_path: Path, keep: bool) -> dict[str, Any]:
    labels = yaml.safe_load(questions_path.read_text())
    home = scratch_dir("streamrag-eval-")
    settings = isolated_settings(home / ".streamrag", source_port=free_port(), stream_trigger_ms=250)
    stack = EmbeddedStack(settings)
    try:
        stack.start_all()
        upgrade(settings.app_database_url)  # as `up` does before the stream and the API start
        with running(settings, [stream_process(settings), api_process(settings)]):
            now = datetime.now(UTC)
            recorded = recording_events(now)
            crafted = {edit["key"]: crafted_event(edit, now) for edit in labels.get("edits") or []}
            names = {key: doc_id(event) for key, event in crafted.items()}
            produce(settings, *recorded, *crafted.values())
            every = [doc_id(event) for event in recorded] + list(names.values())
            print(f"produced {len(recorded)} recorded and {len(crafted)} crafted edits; waiting for the index …")
            wait_until(
                lambda: len(document_states(settings.app_database_url, every)) == len(set(every)), "the index", 300
            )
            gone = [edit["key"] for edit in labels.get("edits") or [] if edit.get("deleted")]
            for key in gone:
                produce(settings, deletion(crafted[key]["title"], crafted[key]["wiki"]))
            wait_until(
                lambda: all(document_states(settings.app_database_url, [names[k] for k in gone]).values()),
                "the deleted pages' tombstones",
                300,
            )
            with httpx.Client(base_url=settings.api_url, timeout=60) as api:

                def keyword_sees(title: str) -> bool:
                    body = {"query": title, "mode": "keyword", "top_k": 5}
                    return any(h["title"] == title for h in api.post("/search", json=body).json().get("hits", []))

                kept = [event for key, event in crafted.items() if key not in gone]
                last = kept[-1] if kept else recorded[-1]  # produced last (and not deleted): seen last
                wait_until(lambda: keyword_sees(last["title"]), "the keyword index", 300)
                time.sleep(2 * settings.keyword_refresh_s)  # and the deletions after it
                outcomes = []
                for item in labels["questions"]:
                    body: dict[str, Any] = {"query": item["question"], "debug": True}
                    filters = {}
                    if "since_hours" in item:
                        filters["since"] = (datetime.now(UTC) - timedelta(hours=item["since_hours"])).isoformat()
                    if "until_hours" in item:
                        filters["until"] = (datetime.now(UTC) - timedelta(hours=item["until_hours"])).isoformat()
                    if filters:
                        body["filters"] = filters
                    response = api.post("/answer", json=body)
                    response.raise_for_status()
                    outcomes.append(judge(item, names, response.json()))
    finally:
        stack.stop_all()
        release(home, keep=keep)
    return report(outcomes)


def report(outcomes: list[Outcome]) -> dict[str, Any]:
    by_kind: dict[str, Tally] = {}
    total = Tally()
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, Tally()).add(outcome.tally)
        total.add(outcome.tally)
    return {
        "overall": total.figures(),
        "by_kind": {kind: tally.figures() for kind, tally in by_kind.items()},
        "questions": [
            {
                "question": o.question,
                "kind": o.kind,
                "expected": o.expected,
                "cited": o.cited,
                "wrongly_cited": [doc for doc in o.cited if doc not in o.allowed],
                "missed": [doc for doc in o.expected if doc not in o.cited],
                "said_idk": o.said_idk,
                "answer": o.answer[:300],
                "retrieved": [(doc, None if sim is None else round(sim, 3)) for doc, sim in o.retrieved[:5]],
            }
            for o in outcomes
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        '| questions | kind | citation precision | citation recall | "I don\'t know" accuracy |',
        "|---|---|---|---|---|",
    ]
    rows = [("all", result["overall"])] + sorted(result["by_kind"].items())
    for kind, figures in rows:
        cells = [
            "—" if figures[name] is None else f"{figures[name]:.2f}"
            for name in ("citation_precision", "citation_recall", "idk_accuracy")
        ]
        lines.append(f"| {figures['questions']} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=QUESTIONS, help="The labelled questions (YAML).")
    parser.add_argument("--out", type=Path, help="Also write the whole result (every question) as JSON here.")
    parser.add_argument("--keep-state", action="store_true", help="Keep the run's state directory.")
    args = parser.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}  {cpu_kind()}")
    result = run(args.questions, args.keep_state)
    for item in result["questions"]:
        if item["wrongly_cited"] or item["missed"] or item["said_idk"] != (not item["expected"]):
            print(f"- [{item['kind']}] {item['question']}: cited {item['cited']}, expected {item['expected']}")
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
