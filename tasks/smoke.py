"""smoke_test: send the spec's smoke request to the deployed service and check the answer.

A fresh revision may still be cold: connection errors, 429 and 5xx are retried with backoff
until `smoke.deadline_s` (that loop lives here, not in Prefect retries, because it is about
the service warming up, not about a flaky API). Private services get an ID token whose
audience is the service URL. Never cached: it checks what is live now.

Ingress: a service whose ingress is internal-only or internal-and-gclb cannot be reached from
outside its VPC network, on its URL or its tag URLs (Cloud Run's front end answers its own 404
page). Whether this worker is inside is found by trying: a worker inside gets the function's
answer and the test runs as usual; a refused one fails, saying why and what to do, unless
the manifest accepts it (`smoke.accept_unreachable`): then the result says `unreachable`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run import events
from cf2run.errors import SmokeRefused, SmokeTestFailed
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.mapping import INGRESS
from cf2run.manifest.spec import FunctionSpec, SmokeRequest, Target
from cf2run.results import Deployment, SmokeResult
from tasks.deploy import Log, get_service, log

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
#: Right after the allUsers binding is set, Google may refuse callers for a while (IAM propagation).
IAM_PROPAGATION_STATUSES = frozenset({401, 403})
EXCERPT_CHARS = 200
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
MAX_REQUEST_TIMEOUT_S = 30.0


@dataclass
class Attempts:
    """What the retry loop saw: the number of requests and the last answer or error."""

    count: int = 0
    response: httpx.Response | None = None
    error: httpx.TransportError | None = None
    latency_s: float = 0.0


def request_url(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def request_headers(smoke: SmokeRequest, token: str | None) -> dict[str, str]:
    """The smoke request's headers plus the ID token (in X-Serverless-Authorization when the
    request already has its own Authorization, as Cloud Run allows)."""
    headers = dict(smoke.headers)
    if token:
        has_own = any(name.lower() == "authorization" for name in headers)
        headers["X-Serverless-Authorization" if has_own else "Authorization"] = f"Bearer {token}"
    return headers


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[:EXCERPT_CHARS] + "..."


def run_smoke(url: str, smoke: SmokeRequest, token: str | None = None, *, public: bool = False,
              any_2xx: bool = False, log: Callable[[str], None] = lambda line: None,
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> SmokeResult:
    """Send `smoke` to `url` until it is not a cold-start answer or the deadline passes, then check it.

    Retried until the deadline: connection errors, 429 and 5xx, and for a `public` service also
    401/403 (the new allUsers binding may not have propagated yet). `any_2xx`: every 2xx status
    passes (an event function may answer 200 or 204).
    """
    target = request_url(url, smoke.path)
    retry = RETRY_STATUSES | (IAM_PROPAGATION_STATUSES if public else frozenset())
    attempts = send_until_warm(target, smoke, request_headers(smoke, token), retry, log, sleep, clock)
    response = attempts.response
    if response is None:
        raise SmokeTestFailed(
            f"smoke_test {smoke.method} {target}: no answer after {attempts.count} attempts in "
            f"{smoke.deadline_s:g}s ({attempts.error})",
            hint="the service did not accept connections; check its logs and that the URL is reachable")
    got = excerpt(response.text)
    passed = 200 <= response.status_code < 300 if any_2xx else response.status_code == smoke.expect_status
    if not passed:
        waited = " (still failing at the deadline)" if response.status_code in retry else ""
        expected = "a 2xx status" if any_2xx else f"status {smoke.expect_status}"
        message = (f"smoke_test {smoke.method} {target}: expected {expected}, got "
                   f"{response.status_code}{waited} after {attempts.count} attempts; body: {got!r}")
        hint = _status_hint(response.status_code, token is not None, public)
        if front_end_404(response):
            raise SmokeRefused(message, hint=hint, attempts=attempts.count)
        raise SmokeTestFailed(message, hint=hint)
    if smoke.expect_body is not None and smoke.expect_body not in response.text:
        raise SmokeTestFailed(
            f"smoke_test {smoke.method} {target}: status {response.status_code} as expected, but the "
            f"body does not contain {smoke.expect_body!r}; body: {got!r}",
            hint="check the function's answer, or fix smoke.expect_body in the manifest")
    return SmokeResult(status=response.status_code, latency_s=round(attempts.latency_s, 4),
                       excerpt=got, attempts=attempts.count)


def front_end_404(response: httpx.Response) -> bool:
    """Whether a 404 is Google's front end's own page (what it answers a caller that ingress
    keeps out; see cf2run/localcloud/cloudrun/router.py), not one of the function's: HTML whose text is
    Google's "The requested URL ... was not found on this server." (Flask's and Express's say
    otherwise)."""
    return (response.status_code == 404
            and response.headers.get("content-type", "").startswith("text/html")
            and "was not found on this server" in response.text)


def _status_hint(status: int, with_token: bool, public: bool) -> str:
    if status in IAM_PROPAGATION_STATUSES:
        if with_token:
            return "the service refused the ID token; the caller needs roles/run.invoker on it"
        if public:
            return "allUsers may not invoke it: see the deploy step's warning about the IAM binding"
        return "the service is private; set allow_unauthenticated: true or call it with an ID token"
    if status == 404:
        return "check smoke.path and the function's routes"
    if status in RETRY_STATUSES:
        return "the function fails or is overloaded; read the revision's logs (or raise smoke.deadline_s)"
    return "check the function's answer, or fix smoke.expect_status in the manifest"


@functools.cache
def _http() -> httpx.Client:
    """One HTTP client for every smoke test of the process: a new one builds a TLS context,
    which costs more CPU than the smoke request itself."""
    return httpx.Client(follow_redirects=False)


def send_until_warm(url: str, smoke: SmokeRequest, headers: dict[str, str],
                    retry: frozenset[int] = RETRY_STATUSES, log: Callable[[str], None] = lambda line: None,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> Attempts:
    """Send `smoke` to `url` (with `headers`) again while the answer is a connection error or a
    `retry` status other than the expected one, until `smoke.deadline_s`; what the last try got."""
    deadline = clock() + smoke.deadline_s
    attempts = Attempts()
    delay = FIRST_DELAY_S
    http = _http()
    while True:
        remaining = deadline - clock()
        attempts.count += 1
        started = clock()
        try:
            attempts.response = http.request(
                smoke.method, url, headers=headers, content=smoke.body,
                json=smoke.json_body, timeout=max(0.1, min(remaining, MAX_REQUEST_TIMEOUT_S)))
            attempts.error = None
            status = attempts.response.status_code
            outcome = f"HTTP {status}"
            cold = status in retry and status != smoke.expect_status
        except httpx.TransportError as error:
            attempts.response, attempts.error = None, error
            outcome, cold = f"{type(error).__name__}: {error}", True
        attempts.latency_s = clock() - started
        remaining = deadline - clock()
        if not cold or remaining <= 0:
            return attempts
        wait = min(max(delay, _retry_after(attempts.response)), MAX_DELAY_S, remaining)
        log(f"attempt {attempts.count}: {outcome}; retrying in {wait:.1f}s "
            f"({remaining:.0f}s left of smoke.deadline_s)")
        sleep(wait)
        delay = min(delay * 2, MAX_DELAY_S)


def answers_without_token(url: str, deadline_s: float, log: Callable[[str], None] = lambda line: None,
                          sleep: Callable[[float], None] = time.sleep,
                          clock: Callable[[], float] = time.monotonic) -> int | None:
    """The status `url` answers a GET without a token, asked again while it is 401/403 (a new
    allUsers binding takes a moment to apply), 429 or 5xx, until `deadline_s`; None: no answer."""
    request = SmokeRequest(deadline_s=deadline_s)
    retry = RETRY_STATUSES | IAM_PROPAGATION_STATUSES
    attempts = send_until_warm(url, request, {}, retry, log, sleep, clock)
    return attempts.response.status_code if attempts.response is not None else None


def _retry_after(response: httpx.Response | None) -> float:
    """The seconds a Retry-After header asks for (0 when there is none or it is a date)."""
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    return float(value) if value.isdigit() else 0.0


def request_for(spec: FunctionSpec, target: Target) -> tuple[SmokeRequest, bool]:
    """(the request, whether any 2xx passes): a function with a trigger gets an event of it (any
    2xx, unless the manifest sets smoke.expect_status); others the manifest's request."""
    if spec.trigger is None:
        return spec.smoke, False
    return events.smoke_request(spec, target), "expect_status" not in spec.smoke.model_fields_set


def smoke(cloud: Cloud, spec: FunctionSpec, target: Target, deployment: Deployment,
          logger: Log = log) -> SmokeResult:
    """The spec's smoke request (or its trigger's event) against the candidate's tag URL, else the
    service URL, with an ID token; a request the service's ingress refused fails saying so, or
    is `unreachable` when the manifest accepts that."""
    # Every service gets an ID token (cf2run/gcp/credentials.py), whatever the credentials: a public
    # service is opened only after its smoke test passes, so a call without one is refused.
    token = cloud.id_token(deployment.url)
    url = deployment.smoke_url
    what = f"candidate {deployment.revision} (tag {deployment.tag})" if deployment.candidate_url else \
        deployment.revision
    request, any_2xx = request_for(spec, target)
    event = f" with a {request.headers.get('ce-type')} event" if spec.trigger else ""
    try:
        result = run_smoke(url, request, token, any_2xx=any_2xx, log=logger.info)
    except SmokeRefused as refused:
        ingress = internal_ingress(cloud, deployment.service)
        if ingress is None:  # a function that answers such a page itself: an ordinary failure
            raise SmokeTestFailed(refused.message, hint=refused.hint) from refused
        return _unreachable(spec, request_url(url, request.path), ingress, refused, logger)
    logger.info("smoke %s %s%s on %s%s passed: HTTP %s in %.3fs after %s attempt(s)", request.method,
                url, request.path, what, event, result.status, result.latency_s, result.attempts)
    return result


def internal_ingress(cloud: Cloud, service: str) -> str | None:
    """The service's ingress as the manifest names it when it keeps callers outside the VPC out
    (internal-only, internal-and-gclb); None when it lets everyone in."""
    found = get_service(cloud.services, service, step="smoke_test")
    names = {value: name for name, value in INGRESS.items()}
    name = names.get(found.ingress) if found is not None else None
    return name if name not in (None, "all") else None


def _unreachable(spec: FunctionSpec, url: str, ingress: str, refused: SmokeRefused,
                 logger: Log) -> SmokeResult:
    why = (f"smoke_test {url}: unreachable from this worker: the service's ingress {ingress} keeps "
           "callers outside its VPC network out (Cloud Run answered 404 before the function saw "
           "the request)")
    if not spec.smoke.accept_unreachable:
        raise SmokeTestFailed(why, hint="run the worker inside the service's VPC network (a VM, GKE, "
                                        "or Cloud Run with Direct VPC egress in that network), or set "
                                        "smoke.accept_unreachable: true in the manifest to promote "
                                        "it without a smoke test")
    logger.warning("%s; smoke.accept_unreachable is set: not tested, reported as unreachable", why)
    return SmokeResult(status=404, latency_s=0.0, excerpt="", attempts=refused.attempts,
                       unreachable=True)


@task(name="smoke", task_run_name="smoke[{spec.name}]", cache_policy=NO_CACHE)
def smoke_test(spec: FunctionSpec, target: Target, deployment: Deployment) -> SmokeResult:
    """See `smoke`."""
    return smoke(Cloud.for_target(target), spec, target, deployment, get_run_logger())
