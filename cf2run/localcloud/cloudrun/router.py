"""Stable URLs for local Cloud Run services and tags, with traffic split and access control.

Each service URL and each tag URL is its own HTTP listener on 127.0.0.1 (the caller keeps the
port, so the URL survives a restart); one thread accepts the connections of all of them
(frontend/acceptor.py: nothing runs while no one calls, however many URLs there are).
A request is checked as Cloud Run's front end does (first the network: a service whose
ingress is internal answers 404 to a caller outside its VPC; then access: private means an ID
token whose audience is the URL, else 403, or 401 for a token it refuses), sent to one of the
route's revisions, weighted by their traffic percent whether its instance runs or is scaled to
zero (`backend` gives a running instance's address, after a cold start if need be:
`scaling.Instances.serving`), and proxied over HTTP/1.1:

    router = Router(tokens, backend=instances.serving, inside_vpc=lambda: settings.caller_in_vpc)
    url = router.open("svc", port=0)
    router.route("svc", [("svc-00001-abc", 90), ("svc-00002-def", 10)], public=False, audiences=[url])

Where a caller is: every caller on 127.0.0.1 is on the same network, so the local cloud cannot
tell inside from outside by address. `inside_vpc()` says it for all callers at once: the
setting ``caller_in_vpc`` (``CF2RUN_LOCALCLOUD_CALLER_IN_VPC=1``) stands for a worker that
runs inside the service's VPC network (a VM, GKE, or Cloud Run with Direct VPC egress);
unset, callers are on the internet, as a laptop is.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from cf2run.localcloud.cloudrun.scaling import NoInstance
from cf2run.localcloud.frontend.acceptor import Acceptor, Listener
from cf2run.localcloud.frontend.proxy import ConnectionPool, ProxyHandler
from cf2run.localcloud.iam.accounts import GCLOUD_CLIENT_IDS
from cf2run.localcloud.iam.metadata import TokenAuthority, google_error_page

log = logging.getLogger(__name__)

#: Held around one request: the address of an instance of the revision, or `NoInstance`.
Backend = Callable[[str], AbstractContextManager[str]]

#: Ingress values (run_v2.IngressTraffic names) that keep callers outside the VPC out.
INTERNAL_INGRESS = frozenset({"INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"})
#: Cloud Run hands the verified token on to the container without its signature.
REMOVED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"


@dataclass(frozen=True)
class Route:
    """Where a URL's requests go: (revision name, percent) pairs, and who may send them."""

    backends: tuple[tuple[str, int], ...] = ()
    public: bool = False
    audiences: tuple[str, ...] = ()
    timeout_s: float = 300.0
    internal: bool = False  # the service's ingress lets in callers inside its VPC only


class Router:
    """The HTTP listeners of every service and tag URL. Thread-safe.

    `backend(revision)` is held around each request: a running instance's ``host:port``
    (started if it was scaled to zero), or `NoInstance`. `inside_vpc()`, asked on every request
    too, says whether callers are inside the services' VPC network (see the module docstring).
    """

    def __init__(self, tokens: TokenAuthority, backend: Backend,
                 inside_vpc: Callable[[], bool] = lambda: False) -> None:
        self.tokens = tokens
        self.backend = backend
        self.inside_vpc = inside_vpc
        self._listeners: dict[str, Listener] = {}
        self._acceptor = Acceptor("cloudrun-urls")
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._pool = ConnectionPool()

    def open(self, key: str, port: int = 0) -> str:
        """Listen for `key` (a service or tag); returns its URL ``http://127.0.0.1:PORT``.

        Reuses the listener when `key` is open already. When `port` is taken by someone else
        a new port is chosen (and logged): the caller should persist the URL it gets.
        """
        with self._lock:
            listener = self._listeners.get(key)
            if listener is None:
                handler = type("ServiceHandler", (_ServiceHandler,),
                               {"router": self, "key": key, "pool": self._pool})
                try:
                    listener = Listener(self._acceptor, handler, port)
                except OSError as exc:
                    if port == 0:
                        raise
                    log.warning("cannot listen on 127.0.0.1:%d for %s again (%s); using a new port",
                                port, key, exc)
                    listener = Listener(self._acceptor, handler, 0)
                self._listeners[key] = listener
            return listener.url

    def url(self, key: str) -> str | None:
        listener = self._listeners.get(key)
        return listener.url if listener else None

    def route(self, key: str, backends: Sequence[tuple[str, int]], *, public: bool,
              audiences: Sequence[str] = (), timeout_s: float = 300.0, ingress: str = "") -> None:
        """Set where `key`'s requests go and who may send them (takes effect on the next request).

        `audiences`: the token audiences accepted when not public; empty means the URL itself.
        `ingress`: the service's `run_v2.IngressTraffic` name; an internal one keeps callers
        outside the VPC out (the same for the service URL and every tag URL: it is the service's).
        """
        self._routes[key] = Route(tuple(backends), public, tuple(audiences), timeout_s,
                                  internal=ingress in INTERNAL_INGRESS)

    def close(self, key: str) -> None:
        """Stop listening for `key` and forget its route."""
        with self._lock:
            listener = self._listeners.pop(key, None)
            self._routes.pop(key, None)
        if listener is not None:
            listener.stop()

    def stop_all(self) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
            self._routes.clear()
        for listener in listeners:
            listener.stop()
        self._acceptor.close()
        self._pool.clear()

    def pick(self, route: Route) -> str | None:
        """The revision one request goes to, chosen by traffic percent (None: no traffic)."""
        weighted = [(name, percent) for name, percent in route.backends if percent > 0]
        if not weighted:
            return None
        if len(weighted) == 1:
            return weighted[0][0]
        return random.choices([n for n, _ in weighted], weights=[p for _, p in weighted])[0]


def running_only(resolve: Callable[[str], str | None]) -> Backend:
    """A `Backend` of processes that run already (no cold starts): `resolve(revision)` is the
    address, or None for `NoInstance`."""
    @contextmanager
    def backend(revision: str) -> Iterator[str]:
        address = resolve(revision)
        if address is None:
            raise NoInstance(revision, f"revision {revision} has no running instance", cold_start=False)
        yield address

    return backend


class _ServiceHandler(ProxyHandler):
    """Cloud Run's front end for one service or tag URL: ingress, then the ID token, then a revision."""

    router: Router
    key: str
    backend = "the revision"

    def handle_any(self) -> None:
        route = self.router._routes.get(self.key)
        if route is None:
            self.fail(503, "Service Unavailable: nothing is deployed at this URL yet.\n")
            return
        if route.internal and not self.router.inside_vpc():
            # Ingress is checked before IAM, at the network: from outside the VPC an internal
            # service's run.app URL (and its tag URLs) "cannot be reached"
            # (https://cloud.google.com/run/docs/securing/ingress), and what the caller gets is
            # Google's front end's 404 page, whatever token it sends (seen from outside the VPC
            # in richardhe-fundamenta/practical-gcp-examples#11, 2026; an older report,
            # ahmetb/runsd#40 of 2021, saw 403: Google's answer has changed over time).
            self.fail(404, google_error_page(404, self.path.split("?")[0]), "text/html; charset=UTF-8")
            return
        forwarded = self.forwarded_headers()
        refused = None if route.public else self._authorize(route, forwarded)
        if refused is not None:
            self.fail(refused, google_error_page(refused, self.path.split("?")[0]),
                       "text/html; charset=UTF-8")
            return
        revision = self.router.pick(route)
        if revision is None:
            self.fail(503, "Service Unavailable: no revision of this service is ready to serve.\n")
            return
        try:
            with self.router.backend(revision) as address:
                self.forward(address, route.timeout_s, forwarded)
        except NoInstance as error:
            # An instance that cannot start: Cloud Run answers 503 and its request log says "The
            # request was aborted because there was no available instance" (known issues page,
            # https://cloud.google.com/run/docs/known-issues); the service log says it here, with why.
            self.fail(503, f"Service Unavailable: {error.reason}\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    # -- access --------------------------------------------------------------------------------

    def _authorize(self, route: Route, headers: list[tuple[str, str]]) -> int | None:
        """None when a bearer ID token for the URL (or the route's audiences) lets the caller in,
        else the status Cloud Run answers (`id_token_refusal`)."""
        audiences = route.audiences or (self.router.url(self.key) or "",)
        return id_token_refusal(headers, self.router.tokens, audiences)


def id_token_refusal(headers: list[tuple[str, str]], tokens: TokenAuthority,
                     audiences: Sequence[str]) -> int | None:
    """None when a bearer ID token in `headers` lets the caller in (X-Serverless-Authorization first,
    as Cloud Run does; the backend receives it without its signature, changed in `headers`). Else
    the status Google's front end answers: 403 without a token, 401 with one it refuses (expired,
    not Google's, another audience: the "401 Unauthorized" page of google/adk-python#3814). Besides
    `audiences` (the URL), user ID tokens issued to gcloud's OAuth clients (accounts.GCLOUD_CLIENT_IDS)
    are taken, as Cloud Run and 1st-gen Cloud Functions take `gcloud auth print-identity-token`."""
    accepted = (*audiences, *GCLOUD_CLIENT_IDS)
    refused = 403
    for header in ("x-serverless-authorization", "authorization"):
        for i, (name, value) in enumerate(headers):
            scheme, _, token = value.partition(" ")
            token = token.strip()
            if name.lower() != header or scheme.lower() != "bearer":
                continue
            if tokens.verify(token, accepted):
                headers[i] = (name, f"{scheme} {token.rsplit('.', 1)[0]}.{REMOVED_SIGNATURE}")
                return None
            refused = 401
    return refused
