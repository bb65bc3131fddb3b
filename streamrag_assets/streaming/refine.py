"""Silver and Gold logic as plain functions over one raw event: parse, validate, normalise, render the document.

No I/O and no Spark here; `transforms.py` applies these to DataFrames. A rejected event yields a reason and goes to
quarantine; nothing is dropped without a count.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streamrag_assets.ingest.events import PROBE_WIKI
from streamrag_assets.isotime import parse_iso_time
from streamrag_assets.streaming.schemas import DOCUMENT_TYPES, TRANSFORM_VERSION, VALID_TYPES

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_LANG = re.compile(
    r"^([a-z]{2,3}(?:-[a-z]+)*)\.(?:wikipedia|wiktionary|wikibooks|wikinews|wikiquote|wikisource|"
    r"wikiversity|wikivoyage)\.org$"
)
TEXT_COMMENT_LIMIT = 500
LARGE_CHANGE_BYTES = 10_000
NAMESPACE_RANGE = (-2, 100_000)
# Every integer is stored as int64 (Arrow, Delta, Postgres bigint); orjson hands out Python ints up to 2**64 - 1.
INT64_RANGE = (-(2**63), 2**63 - 1)
# Wikimedia's events cannot predate Wikipedia; a clock a week ahead is broken. Both bounds keep event times far
# from the calendar's limits, where converting an offset to UTC overflows, and inside the hourly partitions.
EARLIEST_EVENT_TIME = datetime(2001, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=7)
# Postgres text refuses NUL; a B-tree entry (documents_wiki_title) holds at most ~2.7 kB. MediaWiki's own limits
# are far below these (titles 255 bytes, user names 255 bytes, edit summaries 1,000 characters).
MAX_FIELD_BYTES = {"title": 1_000, "wiki": 100, "user": 1_000, "type": 20, "log_type": 100, "log_action": 100}
MAX_ID_BYTES = 200

_STR_FIELDS = ("type", "title", "wiki")
_OPTIONAL_STR = (
    "title_url",
    "comment",
    "parsedcomment",
    "user",
    "server_url",
    "server_name",
    "server_script_path",
    "notify_url",
    "log_type",
    "log_action",
)
_OPTIONAL_BOOL = ("bot", "minor", "patrolled")


class Rejected(ValueError):
    """The event cannot enter Silver; the message is the quarantine reason."""


def plain_text(parsed_comment: str | None, comment: str | None) -> str:
    """The comment without markup: tags removed, entities decoded, whitespace collapsed."""
    if parsed_comment:
        return _SPACE.sub(" ", html.unescape(_TAG.sub("", parsed_comment))).strip()
    return _SPACE.sub(" ", comment or "").strip()


def _int(value: Any, field: str, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise Rejected(f"missing_field:{field}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(f"wrong_type:{field}")
    if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise Rejected(f"out_of_range:{field}")
    return value


def _str(event: dict, field: str, required: bool = False) -> str | None:
    value = event.get(field)
    if value is None:
        if required:
            raise Rejected(f"missing_field:{field}")
        return None
    if not isinstance(value, str):
        raise Rejected(f"wrong_type:{field}")
    _check_text(value, field, MAX_FIELD_BYTES.get(field))
    return value


def _check_text(value: str, field: str, max_bytes: int | None = None) -> None:
    """Reject text the stores cannot hold: NUL (Postgres text), and fields longer than their index allows."""
    if "\x00" in value:
        raise Rejected(f"invalid_text:{field}")
    if max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise Rejected(f"too_long:{field}")


def _required_str(event: dict, field: str) -> str:
    value = _str(event, field, required=True)
    if value is None:  # _str raised already; this narrows the type
        raise Rejected(f"missing_field:{field}")
    return value


def _required_int(value: Any, field: str) -> int:
    number = _int(value, field, required=True)
    if number is None:
        raise Rejected(f"missing_field:{field}")
    return number


def _pair(event: dict, field: str) -> tuple[int | None, int | None]:
    value = event.get(field)
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise Rejected(f"wrong_type:{field}")
    return _int(value.get("old"), f"{field}.old"), _int(value.get("new"), f"{field}.new")


def parse_event(value: str | bytes | None) -> dict[str, Any]:
    """A raw topic value as Silver fields; raises Rejected with the reason when it is not a valid event."""
    if value is None:
        raise Rejected("empty_value")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Rejected("invalid_json") from None
    if not isinstance(event, dict):
        raise Rejected("not_an_object")
    meta = event.get("meta")
    if not isinstance(meta, dict):
        raise Rejected("missing_meta")
    event_id, dt = meta.get("id"), meta.get("dt")
    if not isinstance(event_id, str) or not event_id:
        raise Rejected("missing_field:meta.id")
    _check_text(event_id, "meta.id", MAX_ID_BYTES)
    if not isinstance(dt, str):
        raise Rejected("wrong_type:meta.dt" if dt is not None else "missing_field:meta.dt")
    event_time = _event_time(dt)
    kind, title, wiki = (_required_str(event, f) for f in _STR_FIELDS)
    if kind not in VALID_TYPES:
        raise Rejected("invalid_type")
    namespace = _required_int(event.get("namespace"), "namespace")
    if not NAMESPACE_RANGE[0] <= namespace <= NAMESPACE_RANGE[1]:
        raise Rejected("invalid_namespace")
    length_old, length_new = _pair(event, "length")
    if (length_old or 0) < 0 or (length_new or 0) < 0:
        raise Rejected("invalid_length")
    revision_old, revision_new = _pair(event, "revision")
    strings = {f: _str(event, f) for f in _OPTIONAL_STR}
    flags = {}
    for field in _OPTIONAL_BOOL:
        flag = event.get(field)
        if flag is not None and not isinstance(flag, bool):
            raise Rejected(f"wrong_type:{field}")
        flags[field] = flag
    if kind in ("edit", "new") and revision_new is None:
        raise Rejected("missing_field:revision.new")
    log_id = _int(event.get("log_id"), "log_id", required=kind == "log")
    log_params = event.get("log_params")
    domain = meta.get("domain") if isinstance(meta.get("domain"), str) else strings["server_name"]
    if domain is not None:
        _check_text(domain, "meta.domain", MAX_FIELD_BYTES["wiki"] * 2)
    try:
        log_params = orjson.dumps(log_params).decode() if log_params not in (None, [], {}) else None
    except TypeError:  # orjson's encode error: nesting beyond its limit, or a value it cannot write
        raise Rejected("invalid_field:log_params") from None
    server_url = strings["server_url"] or (f"https://{domain}" if domain else None)
    page_url = strings["title_url"] or (f"{server_url}/wiki/{title.replace(' ', '_')}" if server_url else None)
    return {
        "event_id": event_id,
        "event_time": event_time,
        "event_date": event_time.date(),
        "wiki": wiki,
        "domain": domain,
        "type": kind,
        "namespace": namespace,
        "title": title,
        "page_url": page_url,
        "comment": strings["comment"],
        "comment_text": plain_text(strings["parsedcomment"], strings["comment"]),
        "user": strings["user"],
        "bot": bool(flags["bot"]),
        "minor": flags["minor"],
        "patrolled": flags["patrolled"],
        "length_old": length_old,
        "length_new": length_new,
        "revision_old": revision_old,
        "revision_new": revision_new,
        "rc_id": _int(event.get("id"), "id"),
        "log_id": log_id,
        "log_type": strings["log_type"],
        "log_action": strings["log_action"],
        "log_params": log_params,
        "server_url": server_url,
        "notify_url": strings["notify_url"],
    }


def _event_time(dt: str) -> datetime:
    """meta.dt as an aware UTC time, rejected unless it is a plausible time for an event (see EARLIEST_EVENT_TIME)."""
    try:
        event_time = parse_iso_time(dt, naive_tz=UTC).astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO 8601, or an offset that carries it past the calendar's ends
        raise Rejected("invalid_time") from None
    if event_time < EARLIEST_EVENT_TIME:
        raise Rejected("implausible_time:past")
    if event_time > datetime.now(UTC) + FUTURE_TOLERANCE:
        raise Rejected("implausible_time:future")
    return event_time


def is_canary(event: dict[str, Any]) -> bool:
    return event.get("domain") == "canary"


def language(domain: str | None) -> str:
    match = _LANG.match(domain or "")
    return match.group(1) if match else "multi"


def _document_op(silver: dict[str, Any]) -> tuple[str, str | None]:
    if (
        silver["type"] == "log"
        and silver["log_type"] == "delete"
        and silver["log_action"] in ("delete", "delete_redir")
    ):
        return "delete", None
    if silver["type"] == "log" and silver["log_type"] == "move":
        params = orjson.loads(silver["log_params"]) if silver["log_params"] else {}
        target = params.get("target") if isinstance(params, dict) else None
        if isinstance(target, str) and target:
            _check_text(target, "log_params.target", MAX_FIELD_BYTES["title"])
            return "rename", target
    return "upsert", None


def doc_id(silver: dict[str, Any]) -> str:
    if silver["type"] == "log":
        return f"{silver['wiki']}:log:{silver['log_id']}"
    return f"{silver['wiki']}:rev:{silver['revision_new']}"


def render_text(silver: dict[str, Any], op: str, new_title: str | None) -> tuple[str, list[str]]:
    """The change as one readable paragraph, and the quality flags noticed while writing it."""
    flags: list[str] = []
    who = silver["user"] or "an unknown user"
    where = f'"{silver["title"]}" on {silver["wiki"]}'
    when = silver["event_time"].strftime("%Y-%m-%d %H:%M UTC")
    if silver["type"] == "new":
        what = f"{who} created the page {where}"
    elif silver["type"] == "edit":
        what = f"{who} edited {where}"
    elif op == "delete":
        what = f"{who} deleted the page {where}"
    elif op == "rename":
        what = f'{who} moved the page {where} to "{new_title}"'
    else:
        action = silver["log_action"] or silver["log_type"] or "logged an action on"
        what = f"{who} performed {silver['log_type'] or 'a log'} action '{action}' on {where}"
    size = ""
    if silver["length_new"] is not None:
        delta = silver["length_new"] - (silver["length_old"] or 0)
        size = f" ({delta:+,} bytes, now {silver['length_new']:,} bytes)"
        if abs(delta) >= LARGE_CHANGE_BYTES:
            flags.append("large_change")
    comment = silver["comment_text"]
    if not comment:
        flags.append("empty_comment")
    elif len(comment) > TEXT_COMMENT_LIMIT:
        comment = comment[:TEXT_COMMENT_LIMIT].rstrip() + "…"
        flags.append("comment_truncated")
    if silver["bot"]:
        flags.append("bot")
    if silver["minor"]:
        flags.append("minor")
    if silver["patrolled"] is False:
        flags.append("unpatrolled")
    said = f' Comment: "{comment}".' if comment else ""
    return f"{what}{size} at {when}.{said}", flags


def diff_url(silver: dict[str, Any]) -> str | None:
    if silver["notify_url"]:
        return silver["notify_url"]
    if silver["revision_new"] is not None and silver["server_url"]:
        old = f"&oldid={silver['revision_old']}" if silver["revision_old"] else ""
        return f"{silver['server_url']}/w/index.php?diff={silver['revision_new']}{old}"
    return None


def document(silver: dict[str, Any]) -> dict[str, Any] | None:
    """The Gold document for a Silver row; None for changes that are not documents (categorize, external)."""
    if silver["type"] not in DOCUMENT_TYPES:
        return None
    op, new_title = _document_op(silver)
    text, flags = render_text(silver, op, new_title)
    if silver["wiki"] == PROBE_WIKI:
        flags.append("probe")
    doc = {
        "doc_id": doc_id(silver),
        "op": op,
        "text": text,
        "title": silver["title"],
        "new_title": new_title,
        "page_url": silver["page_url"],
        "diff_url": diff_url(silver) if silver["type"] != "log" else None,
        "wiki": silver["wiki"],
        "lang": language(silver["domain"]),
        "namespace": silver["namespace"],
        "type": silver["type"],
        "event_time": silver["event_time"],
        "event_date": silver["event_date"],
        "bot": silver["bot"],
        "quality_flags": flags,
        "event_id": silver["event_id"],
        "transform_version": TRANSFORM_VERSION,
    }
    hashed = "\x1f".join(
        str(doc[k])
        for k in (
            "doc_id",
            "op",
            "text",
            "title",
            "new_title",
            "page_url",
            "diff_url",
            "wiki",
            "namespace",
            "type",
            "bot",
        )
    )
    doc["content_hash"] = hashlib.sha256(hashed.encode()).hexdigest()
    return doc


__all__ = ["PROBE_WIKI", "Rejected", "document", "is_canary", "parse_event", "plain_text"]
