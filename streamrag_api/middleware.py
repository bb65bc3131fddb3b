"""Request metrics for every route: duration by route, method and status class, and a count of the errors."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrag_assets.metrics import API_ERRORS, API_REQUEST_DURATION


class RequestMetrics:
    """Duration by route and error counts for every request (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware runs each request through extra tasks and streams, measurable at this request rate)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/metrics" if scope["path"].startswith("/metrics") else "unmatched")
            if path != "/stream":  # a stream lasts as long as its client
                API_REQUEST_DURATION.labels(path, scope["method"], f"{status // 100}xx").observe(
                    time.perf_counter() - began
                )
            if status >= 400:
                API_ERRORS.labels(path, str(status)).inc()
