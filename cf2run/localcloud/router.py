"""Stable URLs for local Cloud Run services and tags, with traffic split and access control.

Each service URL and each tag URL is its own HTTP listener on 127.0.0.1 (the caller keeps the
port, so the URL survives a restart). A request is checked as Cloud Run's front end does
(first the network: a service whose ingress is internal answers 404 to a caller outside its
VPC; then access: private means an ID token whose audience is the URL, else 403, or 401 for a
token it refuses), sent to
one of the route's ready revisions, weighted by their traffic percent, and proxied over
HTTP/1.1:

    router = Router(tokens, resolve=runtime.address, inside_vpc=lambda: settings.caller_in_vpc)
    url = router.open("svc", port=0)
    router.route("svc", [("svc-00001-abc", 90), ("svc-00002-def", 10)], public=False, audiences=[url])

Where a caller is: every caller on 127.0.0.1 is on the same network, so the local cloud cannot
tell inside from outside by address. `inside_vpc()` says it for all callers at once: the
setting ``caller_in_vpc`` (``CF2RUN_LOCALCLOUD_CALLER_IN_VPC=1``) stands for a worker that
runs inside the service's VPC network (a VM, GKE, or Cloud Run with Direct VPC egress);
unset, callers are on the internet, as a laptop is.
"""

from __future__ import annotations

import http.client
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cf2run.localcloud.accounts import GCLOUD_CLIENT_IDS
from cf2run.localcloud.metadata import LoopbackServer, QuietHandler, TokenAuthority, google_error_page

log = logging.getLogger(__name__)

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
#: headers the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection", "content-length",
                        "expect"})
#: Cloud Run hands the verified token on to the container without its signature.
REMOVED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"
_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, http.client.ImproperConnectionState,
                            BrokenPipeError, ConnectionResetError)
_CHUNK = 64 * 1024
#: Ingress values (run_v2.IngressTraffic names) that keep callers outside the VPC out.
INTERNAL_INGRESS = frozenset({"INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"})


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

    `resolve(revision)` gives a ready revision's ``host:port``, or None when it does not serve
    (the runtime's `address`); it is asked on every request, so a crashed revision stops
    receiving traffic at once. `inside_vpc()`, asked on every request too, says whether callers
    are inside the services' VPC network (see the module docstring).
    """

    def __init__(self, tokens: TokenAuthority, resolve: Callable[[str], str | None],
                 inside_vpc: Callable[[], bool] = lambda: False) -> None:
        self.tokens = tokens
        self.resolve = resolve
        self.inside_vpc = inside_vpc
        self._listeners: dict[str, LoopbackServer] = {}
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._pool = _ConnectionPool()

    def open(self, key: str, port: int = 0) -> str:
        """Listen for `key` (a service or tag); returns its URL ``http://127.0.0.1:PORT``.

        Reuses the listener when `key` is open already. When `port` is taken by someone else
        a new port is chosen (and logged): the caller should persist the URL it gets.
        """
        with self._lock:
            listener = self._listeners.get(key)
            if listener is None:
                handler = type("ProxyHandler", (_ProxyHandler,), {"router": self, "key": key})
                try:
                    listener = LoopbackServer(handler, port)
                except OSError as exc:
                    if port == 0:
                        raise
                    log.warning("cannot listen on 127.0.0.1:%d for %s again (%s); using a new port",
                                port, key, exc)
                    listener = LoopbackServer(handler, 0)
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
        stoppers = [threading.Thread(target=listener.stop) for listener in listeners]
        for thread in stoppers:  # in parallel: each stop waits for its serve loop to notice
            thread.start()
        for thread in stoppers:
            thread.join()
        self._pool.clear()

    def pick(self, route: Route) -> str | None:
        """A ready backend address for one request, chosen by traffic percent."""
        ready = [(address, percent) for name, percent in route.backends
                 if percent > 0 and (address := self.resolve(name))]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0][0]
        return random.choices([a for a, _ in ready], weights=[p for _, p in ready])[0]


class _ProxyHandler(QuietHandler):
    router: Router
    key: str

    def handle_any(self) -> None:
        route = self.router._routes.get(self.key)
        if route is None:
            self._fail(503, "Service Unavailable: nothing is deployed at this URL yet.\n")
            return
        if route.internal and not self.router.inside_vpc():
            # Ingress is checked before IAM, at the network: from outside the VPC an internal
            # service's run.app URL (and its tag URLs) "cannot be reached"
            # (https://cloud.google.com/run/docs/securing/ingress), and what the caller gets is
            # Google's front end's 404 page, whatever token it sends (seen from outside the VPC
            # in richardhe-fundamenta/practical-gcp-examples#11, 2026; an older report,
            # ahmetb/runsd#40 of 2021, saw 403: Google's answer has changed over time).
            self._fail(404, google_error_page(404, self.path.split("?")[0]), "text/html; charset=UTF-8")
            return
        forwarded = self._forwarded_headers()
        refused = None if route.public else self._authorize(route, forwarded)
        if refused is not None:
            self._fail(refused, google_error_page(refused, self.path.split("?")[0]),
                       "text/html; charset=UTF-8")
            return
        address = self.router.pick(route)
        if address is None:
            self._fail(503, "Service Unavailable: no revision of this service is ready to serve.\n")
            return
        try:
            body = self._read_body()
        except ValueError as exc:
            self._fail(400, f"Bad Request: {exc}\n")
            return
        self._proxy(address, route.timeout_s, forwarded, body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    # -- access --------------------------------------------------------------------------------

    def _authorize(self, route: Route, headers: list[tuple[str, str]]) -> int | None:
        """None when a bearer ID token lets the caller in (X-Serverless-Authorization first, as Cloud
        Run does; the revision receives it without its signature). Else the status Cloud Run answers:
        403 without a token, 401 with one it refuses (expired, not Google's, another audience: the
        "401 Unauthorized" page of google/adk-python#3814). Besides the URL, Cloud Run takes user ID
        tokens issued to gcloud's OAuth clients (accounts.GCLOUD_CLIENT_IDS)."""
        audiences = (*(route.audiences or (self.router.url(self.key) or "",)), *GCLOUD_CLIENT_IDS)
        refused = 403
        for header in ("x-serverless-authorization", "authorization"):
            for i, (name, value) in enumerate(headers):
                scheme, _, token = value.partition(" ")
                token = token.strip()
                if name.lower() != header or scheme.lower() != "bearer":
                    continue
                if self.router.tokens.verify(token, audiences):
                    headers[i] = (name, f"{scheme} {token.rsplit('.', 1)[0]}.{REMOVED_SIGNATURE}")
                    return None
                refused = 401
        return refused

    # -- request -------------------------------------------------------------------------------

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        connection = {h.strip().lower() for h in self.headers.get("Connection", "").split(",")}
        headers = [(name, value) for name, value in self.headers.items()
                   if name.lower() not in HOP_BY_HOP and name.lower() not in connection]
        client = self.client_address[0]
        previous = self.headers.get("X-Forwarded-For")
        headers = [h for h in headers if h[0].lower() not in ("x-forwarded-for", "x-forwarded-proto")]
        headers += [("X-Forwarded-For", f"{previous}, {client}" if previous else client),
                    ("X-Forwarded-Proto", "http")]
        return headers

    def _has_body(self) -> bool:
        length = (self.headers.get("Content-Length") or "0").strip()
        return ("chunked" in self.headers.get("Transfer-Encoding", "").lower()
                or not length.isdigit() or int(length) > 0)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile)
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        if not length.strip().isdigit():
            raise ValueError(f"invalid Content-Length {length!r}")
        return self.rfile.read(int(length))

    # -- response ------------------------------------------------------------------------------

    def _fail(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        headers = []
        if self._has_body():  # the body stays unread: this connection cannot carry another request
            self.close_connection = True
            headers.append(("Connection", "close"))
        self.send_body(status, body.encode(), content_type, headers)

    def _proxy(self, address: str, timeout_s: float, headers: list[tuple[str, str]],
               body: bytes | None) -> None:
        try:
            conn, response = self.router._pool.send(address, timeout_s, self.command, self.path,
                                                    headers, body)
        except ConnectionRefusedError:
            self._fail(503, f"Service Unavailable: the revision at {address} refused the connection.\n")
            return
        except TimeoutError:
            self._fail(504, "upstream request timeout\n")
            return
        except (OSError, http.client.HTTPException) as exc:
            self._fail(502, f"Bad Gateway: the revision at {address} failed: {exc!r}\n")
            return
        try:
            self._relay(response)
        except (OSError, http.client.HTTPException) as exc:
            # Too late for an error status: end the client's connection so it sees a short answer.
            log.debug("relaying the answer of %s failed: %r", address, exc)
            self.close_connection = True
            conn.close()
            return
        if response.will_close:
            conn.close()
        else:
            self.router._pool.put(address, conn)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        connection = {h.strip().lower() for h in (response.getheader("Connection") or "").split(",")}
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in connection:
                self.send_header(name, value)
        if self.command == "HEAD" or response.status in (204, 304) or response.status < 200:
            if response.getheader("Content-Length") is not None:
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
            self.end_headers()
            response.read()
            return
        chunked = response.length is None and self.request_version == "HTTP/1.1"
        if response.length is not None:
            self.send_header("Content-Length", str(response.length))
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # an HTTP/1.0 client: the end of the connection ends the body
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        while data := response.read1(_CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        response.read()  # marks the answer complete, so the connection can carry the next request
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


def _read_chunked(rfile: io.BufferedIOBase) -> bytes:
    """Decode a chunked request body (trailers are read and dropped)."""
    parts: list[bytes] = []
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ValueError(f"invalid chunk size line {line[:40]!r}") from None
        if size == 0:
            break
        parts.append(rfile.read(size))
        if rfile.read(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
    while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
        pass
    return b"".join(parts)


class _ConnectionPool:
    """Idle keep-alive connections to revisions, a few per address, kept for a short while
    (servers drop idle ones: gunicorn after 2 s, Node after 5 s)."""

    def __init__(self, max_idle: int = 8, max_idle_s: float = 1.5) -> None:
        self._idle: dict[str, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def send(self, address: str, timeout_s: float, method: str, path: str,
             headers: list[tuple[str, str]], body: bytes | None,
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and read the answer's head; retries once when a reused
        connection turns out to have been closed by the revision."""
        while True:
            conn, reused = self._get(address, timeout_s)
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if body is not None or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body or b"")))
                conn.endheaders(body)
                return conn, conn.getresponse()
            except _STALE_CONNECTION_ERRORS:
                conn.close()
                if not reused:
                    raise
            except BaseException:
                conn.close()
                raise

    def _get(self, address: str, timeout_s: float) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(address, [])
            while idle:
                since, conn = idle.pop()
                if now - since < self._max_idle_s and conn.sock is not None:
                    conn.sock.settimeout(timeout_s)
                    return conn, True
                conn.close()
        host, _, port = address.rpartition(":")
        return http.client.HTTPConnection(host, int(port), timeout=timeout_s), False

    def put(self, address: str, conn: http.client.HTTPConnection) -> None:
        now = time.monotonic()
        expired: list[http.client.HTTPConnection] = []
        with self._lock:
            if now - self._last_sweep > 10 * self._max_idle_s:  # drop what idles, e.g. to stopped revisions
                self._last_sweep = now
                for key, idle in list(self._idle.items()):
                    expired += [c for since, c in idle if now - since >= self._max_idle_s]
                    idle[:] = [(since, c) for since, c in idle if now - since < self._max_idle_s]
                    if not idle:
                        del self._idle[key]
            idle = self._idle.setdefault(address, [])
            if len(idle) < self._max_idle:
                idle.append((now, conn))
            else:
                expired.append(conn)
        for old in expired:
            old.close()

    def clear(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for _, c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()
