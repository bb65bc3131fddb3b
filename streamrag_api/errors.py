"""Errors as part of the interface: unreadable input is a 422 naming each problem; a dependency that is down (or a
pool with no connection free) is a 503 naming it, with Retry-After; nothing a client sends produces a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedTable
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

RETRY_AFTER_S = 5  # what a 503 tells clients to wait: about one health probe of the supervisor
T = TypeVar("T")


class DependencyDown(RuntimeError):
    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} is unavailable: {reason}")
        self.dependency = dependency


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg')}")
    return JSONResponse({"message": "; ".join(problems), "detail": jsonable_encoder(exc.errors())}, status_code=422)


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """4xx from the routes and their dependencies (keys, limits, not found), as {"message": …} like the others."""
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def dependency_down(request: Request, exc: DependencyDown) -> JSONResponse:
    return JSONResponse(
        {"message": str(exc), "dependency": exc.dependency},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def call_database(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a database call; a connection failure becomes DependencyDown("postgres"). A pooled connection that
    turns out dead (Postgres restarted since) invalidates the pool, and the call is tried once more on a new one.
    A pool with no connection free within its timeout is an overload, also a 503 (with Retry-After), not a 500."""
    try:
        return call(*args, **kwargs)
    except PoolTimeout:
        raise DependencyDown("postgres", "every connection of the pool is busy; try again shortly") from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            _raise_if_down(exc)
            raise
    try:
        return call(*args, **kwargs)
    except PoolTimeout:
        raise DependencyDown("postgres", "every connection of the pool is busy; try again shortly") from None
    except DBAPIError as exc:
        _raise_if_down(exc)
        raise


def _raise_if_down(exc: DBAPIError) -> None:
    if isinstance(exc.orig, UndefinedTable):  # a new database before the stream (or `streamrag migrate`) made it
        raise DependencyDown("postgres", "the documents schema is not there yet; the stream makes it") from None
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        raise DependencyDown("postgres", type(exc.orig).__name__ if exc.orig else str(exc)) from None
