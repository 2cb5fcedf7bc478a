"""What every pipeline step shares: when to retry, how long to wait, how results are kept.

Retries happen only for transient failures (network errors, 429, 5xx, UNAVAILABLE...);
a build that failed, an invalid spec or a smoke test that got the wrong answer is not
retried, because the same input fails the same way again.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from google.api_core import exceptions as api_exceptions
from prefect.tasks import exponential_backoff

from cf2run.errors import Cf2RunError

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
