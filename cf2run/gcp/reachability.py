"""An endpoint nobody answers at, said at once: which service, which address, what to do.

A refused connection, a host name that does not resolve and a missing route fail before a byte
is sent, and the next try a second later fails the same way. The official clients retry them
anyway, each for its own deadline (google-cloud-storage's DEFAULT_RETRY: 120 s; Cloud Build's
methods: up to 600 s), and the pipeline's steps retry the client's final error again (tasks/policy.py):
minutes of nested retries ending in a raw urllib3 or gRPC message. Here they become
`EndpointUnreachable` inside the call, which no client retries, so the step's own retries are
the one retry budget:

- `reaching(what, address, hint)`: a context manager for any call (HTTP or gRPC);
- `ReachingSession`: the authorized HTTP session the storage client is given;
- `ReachingInterceptor`: a gRPC client interceptor for the channels of Cloud Build and Cloud Run.

    with reaching("Cloud Storage", "127.0.0.1:4443", hint="start the local cloud"):
        client.bucket("b").reload()
"""

from __future__ import annotations

import errno
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.auth.transport.requests import AuthorizedSession

from cf2run.errors import EndpointUnreachable

#: What gRPC says when it could not connect (its "failed to connect to all addresses" details).
GRPC_REASONS = {"Connection refused": "connection refused", "DNS resolution failed": "its host name "
                "does not resolve", "No route to host": "no route to it",
                "Network is unreachable": "no route to it"}
ERRNO_REASONS = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to it",
                 errno.ENETUNREACH: "no route to it"}
MAX_CHAIN = 20


def unreachable_reason(error: BaseException) -> str | None:
    """Why nothing answered, when `error` (or an error it was raised from or wraps) is a refused
    connection, a name that does not resolve or a missing route; None for anything else (a
    timeout, a reset connection, an HTTP status: those may be worth another try)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending and len(seen) < MAX_CHAIN:
        current = pending.pop()
        if any(current is done for done in seen):
            continue
        seen.append(current)
        if isinstance(current, socket.gaierror):
            return "its host name does not resolve"
        if isinstance(current, OSError) and current.errno in ERRNO_REASONS:
            return ERRNO_REASONS[current.errno]
        if isinstance(current, grpc.RpcError) and isinstance(current, grpc.Call):
            reason = grpc_reason(current.code(), current.details() or "")
            if reason:
                return reason
        reason_attribute = getattr(current, "reason", None)  # urllib3's MaxRetryError
        pending += [e for e in (current.__cause__, current.__context__, reason_attribute, *current.args)
                    if isinstance(e, BaseException)]
    return None


def grpc_reason(code: grpc.StatusCode | None, details: str) -> str | None:
    """Why a gRPC call could not connect, from its UNAVAILABLE details; None otherwise."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    return next((reason for marker, reason in GRPC_REASONS.items() if marker in details), None)


def unreachable(what: str, address: str, reason: str, hint: str) -> EndpointUnreachable:
    return EndpointUnreachable(f"cannot reach {what} at {address}: {reason}", hint=hint)


@contextmanager
def reaching(what: str, address: str, hint: str) -> Iterator[None]:
    """Re-raise an unreachable endpoint as `EndpointUnreachable` naming `what` at `address`."""
    try:
        yield
    except EndpointUnreachable:
        raise
    except Exception as error:
        reason = unreachable_reason(error)
        if reason is None:
            raise
        raise unreachable(what, _address_tried(error) or address, reason, hint) from error


def _address_tried(error: BaseException) -> str | None:
    """The host:port a requests error was for (the token endpoint, say, rather than the API)."""
    for candidate in (error, *(a for a in error.args if isinstance(a, BaseException))):
        request = getattr(candidate, "request", None)
        if request is not None and getattr(request, "url", None):
            return urllib.parse.urlsplit(str(request.url)).netloc or None
    return None


class ReachingSession(AuthorizedSession):
    """google-auth's authorized session, whose unreachable endpoints raise `EndpointUnreachable`
    (which google-cloud-storage's retry predicate does not retry)."""

    def __init__(self, credentials: Any, what: str, hint: str) -> None:
        super().__init__(credentials)
        self._what, self._hint = what, hint

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with reaching(self._what, urllib.parse.urlsplit(url).netloc, self._hint):
            return super().request(method, url, *args, **kwargs)


class ReachingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A unary call that could not connect raises `EndpointUnreachable` instead of UNAVAILABLE
    (which google-api-core's retries would repeat until the method's deadline)."""

    def __init__(self, what: str, address: str, hint: str) -> None:
        self._what, self._address, self._hint = what, address, hint

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any], details: Any,
                              request: Any) -> Any:
        call = continuation(details, request)
        reason = grpc_reason(call.code(), call.details() or "")
        if reason is not None:
            raise unreachable(self._what, self._address, reason, self._hint)
        return call
