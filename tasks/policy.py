"""What every pipeline step shares: when to retry, how long to wait, how results are kept.

Retries happen only for transient failures (network errors, 429, 5xx, UNAVAILABLE...);
a build that failed, an invalid spec or a smoke test that got the wrong answer is not
retried, because the same input fails the same way again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import httpx
from google.api_core import exceptions as api_exceptions
from prefect.tasks import exponential_backoff

from cf2run.errors import Cf2RunError

T = TypeVar("T")

#: google.api_core errors worth another try (gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, ...).
TRANSIENT_API_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable,       # UNAVAILABLE / 503
    api_exceptions.TooManyRequests,          # RESOURCE_EXHAUSTED / 429
    api_exceptions.InternalServerError,      # INTERNAL / 500
    api_exceptions.BadGateway,               # 502
    api_exceptions.GatewayTimeout,           # 504
    api_exceptions.DeadlineExceeded,         # DEADLINE_EXCEEDED
    api_exceptions.Aborted,                  # ABORTED (concurrent modification)
    api_exceptions.Unknown,                  # UNKNOWN at the transport level
)
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL})


def is_transient(error: BaseException) -> bool:
    """True when retrying the same call may well succeed."""
    if isinstance(error, Cf2RunError):
        return error.transient
    if isinstance(error, api_exceptions.RetryError):
        return True
    if isinstance(error, TRANSIENT_API_ERRORS):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in TRANSIENT_HTTP_STATUSES
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code() in TRANSIENT_GRPC_CODES
    return isinstance(error, ConnectionError | TimeoutError)


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry the task run only for transient errors."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except BaseException as raised:
            error = raised
        else:
            return False
    return is_transient(error)


#: Keyword arguments for `@task` of every step that calls a cloud API.
RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
}


def retried(call: Callable[[], T], attempts: int = RETRIES["retries"] + 1, first_delay_s: float = 1.0) -> T:
    """`call()` with a step's retry policy, for a cloud read a flow makes outside any task (a
    check between steps): transient errors tried again with exponential backoff and jitter, as
    `RETRIES` does for task runs; anything else, or the last attempt's error, raised. A busy
    client can miss a deadline (many functions at once in one process: DEADLINE_EXCEEDED on a
    read), which must not fail a migration that a retry completes."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:
            if attempt + 1 >= attempts or not is_transient(error):
                raise
            time.sleep(first_delay_s * 2 ** attempt * (1 + random.uniform(0, 0.5)))
    raise AssertionError("unreachable")
