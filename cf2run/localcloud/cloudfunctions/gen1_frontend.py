"""The front end of 1st-gen HTTP functions: ``http://127.0.0.1:PORT/NAME/...``, as
``https://REGION-PROJECT.cloudfunctions.net/NAME/...``.

One listener for every function (its port is kept across restarts, like the other endpoints). A
request is checked as Google's front end checks it, then proxied to the function's instance
with the ``/NAME`` prefix stripped: "the Cloud Functions deployment strips the function name out
of the URL before your function sees it" (GoogleCloudPlatform/functions-framework-python#54; a
request to ``/NAME`` reaches the function as ``/``, googlearchive/cloud-functions-emulator#26).

- a name no HTTP function has: 404, Google's "not found" page;
- ingress ALLOW_INTERNAL_ONLY / ALLOW_INTERNAL_AND_GCLB: a caller outside the VPC gets the same
  404 as Cloud Run's internal services give (cloudrun/router.py; the local cloud's `caller_in_vpc` setting
  says where callers are);
- private (no ``allUsers`` in roles/cloudfunctions.invoker): an ID token whose audience is the
  function's URL, else 403, or 401 for a token refused (`router.id_token_refusal`, shared with
  Cloud Run's URLs; gen1 takes the same ``gcloud auth print-identity-token`` tokens,
  https://cloud.google.com/functions/1stgendocs/securing/authenticating);
- the request carries ``Function-Execution-Id``, as gen1 requests do (firebase/firebase-tools#1312);
- a function scaled to zero starts on the request (a cold start, `scaling.Instances`); one that
  cannot start answers 500 "The request was aborted because there was no available instance.",
  what gen1 answers then (firebase/firebase-functions#965, FIRST-Tech-Challenge/fmltc#244).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from cf2run.localcloud.cloudrun.router import Backend, id_token_refusal
from cf2run.localcloud.cloudrun.scaling import NO_INSTANCE, NoInstance
from cf2run.localcloud.frontend.proxy import ConnectionPool, ProxyHandler
from cf2run.localcloud.iam.metadata import LoopbackService, TokenAuthority, google_error_page

#: ingressSettings values (v1 CloudFunction.IngressSettings) that keep callers outside the VPC out.
INTERNAL_INGRESS = frozenset({"ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"})


def execution_id() -> str:
    """A gen1 execution id: twelve lowercase letters and digits (``zx1mppz9po8n`` in
    firebase/firebase-tools#1312)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))


@dataclass(frozen=True)
class FunctionRoute:
    """Where one HTTP function's requests go, and who may send them."""

    revision: str
    url: str
    public: bool
    internal: bool
    timeout_s: float


class FunctionsFrontEnd(LoopbackService):
    """The listener and its routing table (function id -> route). `backend(revision)` is held
    around each request: a running instance's address, started if it was scaled to zero
    (`scaling.Instances.serving`); `inside_vpc()` says whether callers are inside the functions'
    VPC network. Both are asked on every request."""

    def __init__(self, tokens: TokenAuthority, backend: Backend,
                 inside_vpc: Callable[[], bool], port: int = 0) -> None:
        super().__init__(port)
        self.tokens = tokens
        self.backend = backend
        self.inside_vpc = inside_vpc
        self.routes: dict[str, FunctionRoute] = {}
        self.pool = ConnectionPool()

    def url_of(self, function_id: str) -> str:
        return f"{self.url}/{function_id}"

    def route(self, function_id: str, route: FunctionRoute | None) -> None:
        """Send `function_id`'s requests by `route` from the next request on (None: 404)."""
        if route is None:
            self.routes.pop(function_id, None)
        else:
            self.routes[function_id] = route

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("FunctionHandler", (_FunctionHandler,), {"front": self, "pool": self.pool})

    def stop(self) -> None:
        super().stop()
        self.pool.clear()


class _FunctionHandler(ProxyHandler):
    front: FunctionsFrontEnd
    backend = "the function's instance"

    def handle_any(self) -> None:
        path, _, query = self.path.partition("?")
        function_id, _, rest = path.lstrip("/").partition("/")
        route = self.front.routes.get(function_id)
        if route is None or (route.internal and not self.front.inside_vpc()):
            self.fail(404, google_error_page(404, path), "text/html; charset=UTF-8")
            return
        headers = self.forwarded_headers()
        refused = None if route.public else id_token_refusal(headers, self.front.tokens, (route.url,))
        if refused is not None:
            self.fail(refused, google_error_page(refused, path), "text/html; charset=UTF-8")
            return
        headers.append(("Function-Execution-Id", execution_id()))
        self.path = f"/{rest}" + (f"?{query}" if query else "")
        try:
            with self.front.backend(route.revision) as address:
                self.forward(address, route.timeout_s, headers)
        except NoInstance as error:
            if error.cold_start:
                self.fail(500, f"{NO_INSTANCE}\n")
            else:
                self.fail(503, "Service Unavailable: the function has no running instance.\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any
