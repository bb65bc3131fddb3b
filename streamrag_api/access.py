"""Who may call the API and how often: API keys, the trusted-caller rule, per-client rate limits, a body size limit.

- Keys (`STREAMRAG_API_KEYS`): when set, every route but /health and the UI's page needs
  `Authorization: Bearer <key>` (401 without one or with a wrong one). Without keys the API is open, which `up` allows
  only on loopback (`Settings.api_auth_problem`).
- Trusted callers hold a key, or — with no keys configured — call from loopback. Only they may ask for `debug`,
  `include_probes` and /health's details (which name internal addresses); others get a 403 or the bare statuses.
- /metrics: a key, or a loopback caller (the Prometheus `up` runs scrapes it without one).
- Rate limits (the `limits` library, moving window, in this process' memory): /search and /answer per client — its
  key, else its address — 429 with Retry-After beyond `STREAMRAG_API_RATE_LIMIT`. A loopback caller of an API
  without keys (the operator's own tools and benchmarks on the machine) is not limited.
- Bodies larger than `STREAMRAG_API_MAX_BODY_BYTES` get a 413 before they are read whole (a plain ASGI middleware).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException, Request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrag_api.schemas import SearchRequest
from streamrag_assets.settings import Settings

BEARER = "bearer"


@dataclass(frozen=True)
class Caller:
    identity: str  # what rate limits count by: the key's digest, or the client's address
    trusted: bool  # may see debug output, probe documents and internal details


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Access:
    def __init__(self, settings: Settings) -> None:
        self.key_digests = [_digest(key) for key in settings.api_key_list()]
        self.limits: list[RateLimitItem] = parse_many(settings.api_rate_limit) if settings.api_rate_limit else []
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    @property
    def keys_required(self) -> bool:
        return bool(self.key_digests)

    def _key_of(self, request: Request) -> str | None:
        """The key the request presents (None: none); a key the API does not know is a 401."""
        header = request.headers.get("authorization")
        if header:
            scheme, _, key = header.partition(" ")
            key = key.strip()
            if scheme.lower() != BEARER or not key:
                raise _unauthorised("the Authorization header must be `Bearer <key>`")
        elif request.url.path == "/stream" and request.query_params.get("access_token"):
            key = request.query_params["access_token"]  # RFC 6750 2.3: a browser's EventSource sends no headers
        else:
            return None
        digest = _digest(key)
        if not any(hmac.compare_digest(digest, known) for known in self.key_digests):
            raise _unauthorised("this API key is not valid")
        return digest

    def caller(self, request: Request) -> Caller:
        """The caller of a route that needs a key when keys are configured."""
        host = request.client.host if request.client else None
        if self.keys_required:
            digest = self._key_of(request)
            if digest is None:
                raise _unauthorised("this API needs a key: send `Authorization: Bearer <key>`")
            return Caller(f"key:{digest[:16]}", trusted=True)
        return Caller(f"ip:{host}", trusted=is_loopback(host))

    def optional_caller(self, request: Request) -> Caller:
        """The caller of an open route (/health): trusted with a valid key, or from loopback when no keys are set."""
        host = request.client.host if request.client else None
        if self.keys_required:
            digest = self._key_of(request)
            if digest is not None:
                return Caller(f"key:{digest[:16]}", trusted=True)
        return Caller(f"ip:{host}", trusted=is_loopback(host) and not self.keys_required)

    def check_rate(self, caller: Caller, scope: str) -> None:
        if caller.trusted and not self.keys_required:
            return
        for item in self.limits:
            if not self.limiter.hit(item, scope, caller.identity):
                reset = self.limiter.get_window_stats(item, scope, caller.identity).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise HTTPException(
                    429,
                    detail=f"rate limit of {item} per client exceeded; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": 'Bearer realm="streamrag"'})


def check_as_of(body: SearchRequest, settings: Settings) -> None:
    """An ``as_of`` older than the retention window is a 422: what was indexed before it is pruned."""
    if body.as_of is not None and body.as_of < datetime.now(UTC) - timedelta(days=settings.retention_days):
        raise HTTPException(
            422,
            detail=f"as_of: older than the retention window ({settings.retention_days:g} days, "
            "STREAMRAG_RETENTION_DAYS): the documents of that time are pruned",
        )


def forbidden(what: str) -> HTTPException:
    return HTTPException(403, detail=f"{what} is only for callers with an API key (or on loopback when none is set)")


class BodyLimit:
    """413 for a request body over ``max_bytes``: at once when Content-Length says so, else as soon as the chunks
    read pass it (a chunked upload cannot make the server buffer more). The app then reads a disconnect, and what it
    would still send is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def noting(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, noting)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"message": f"the request body is larger than {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)
