"""A reverse proxy for the local cloud's front ends: what stands between a caller and a backend
process (Cloud Run's URLs and their revisions, Cloud Storage's API and fake-gcs-server).

`ProxyHandler` reads a request, lets a subclass decide (`handle_any`: who may call, which backend),
and `forward`s it over a pooled keep-alive connection, relaying the answer as it streams in.
"""

from __future__ import annotations

import http.client
import io
import logging
import threading
import time

from cf2run.localcloud.iam.metadata import QuietHandler

log = logging.getLogger(__name__)

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
#: headers the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection", "content-length",
                        "expect"})
_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, http.client.ImproperConnectionState,
                            BrokenPipeError, ConnectionResetError)
_CHUNK = 64 * 1024


class ProxyHandler(QuietHandler):
    """The request/response half of a front end; subclasses set `pool` and say what `backend` is
    (for the 502/503 answers) and implement the check and the choice of the backend."""

    pool: ConnectionPool
    backend = "the backend"

    # -- request -------------------------------------------------------------------------------

    def forwarded_headers(self) -> list[tuple[str, str]]:
        connection = {h.strip().lower() for h in self.headers.get("Connection", "").split(",")}
        headers = [(name, value) for name, value in self.headers.items()
                   if name.lower() not in HOP_BY_HOP and name.lower() not in connection]
        client = self.client_address[0]
        previous = self.headers.get("X-Forwarded-For")
        headers = [h for h in headers if h[0].lower() not in ("x-forwarded-for", "x-forwarded-proto")]
        headers += [("X-Forwarded-For", f"{previous}, {client}" if previous else client),
                    ("X-Forwarded-Proto", "http")]
        return headers

    def has_body(self) -> bool:
        length = (self.headers.get("Content-Length") or "0").strip()
        return ("chunked" in self.headers.get("Transfer-Encoding", "").lower()
                or not length.isdigit() or int(length) > 0)

    def read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return read_chunked(self.rfile)
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        if not length.strip().isdigit():
            raise ValueError(f"invalid Content-Length {length!r}")
        return self.rfile.read(int(length))

    # -- response ------------------------------------------------------------------------------

    def fail(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        headers = []
        if self.has_body():  # the body stays unread: this connection cannot carry another request
            self.close_connection = True
            headers.append(("Connection", "close"))
        self.send_body(status, body.encode(), content_type, headers)

    def forward(self, address: str, timeout_s: float, headers: list[tuple[str, str]]) -> None:
        """Send the request (its body read here) to `address`, relay the answer; 400 for a body
        that cannot be read, 502/503/504 when the backend fails."""
        try:
            body = self.read_body()
        except ValueError as exc:
            self.fail(400, f"Bad Request: {exc}\n")
            return
        try:
            conn, response = self.pool.send(address, timeout_s, self.command, self.path, headers, body)
        except ConnectionRefusedError:
            self.fail(503, f"Service Unavailable: {self.backend} at {address} refused the connection.\n")
            return
        except TimeoutError:
            self.fail(504, "upstream request timeout\n")
            return
        except (OSError, http.client.HTTPException) as exc:
            self.fail(502, f"Bad Gateway: {self.backend} at {address} failed: {exc!r}\n")
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
            self.pool.put(address, conn)

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


def read_chunked(rfile: io.BufferedIOBase) -> bytes:
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


class ConnectionPool:
    """Idle keep-alive connections to backends (revisions, fake-gcs-server), a few per address, kept
    for a short while (servers drop idle ones: gunicorn after 2 s, Node after 5 s)."""

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
        connection turns out to have been closed by the backend."""
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
