"""run_smoke against a real local HTTP server that answers from a script (cold starts, errors)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cf2run.errors import SmokeTestFailed
from cf2run.manifest.spec import SmokeRequest
from tasks.smoke import run_smoke


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """Answers in order (the last one repeats), and the requests that came in."""

    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=lambda: [(200, "ok", {})])
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        script = self.server.script
        length = int(self.headers.get("Content-Length") or 0)
        script.seen.append(Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length)))
        status, body, headers = script.answers[min(len(script.seen), len(script.answers)) - 1]
        data = body.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: Script


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.script = Script()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.script
    httpd.shutdown()
    httpd.server_close()


class Sleeps(list[float]):
    """A `sleep` that records how long it was asked to wait, and does not wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_cold_start_503s_are_retried_until_200(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, "starting", {}), (503, "starting", {}), (200, "hello world", {})]
    sleeps = Sleeps()
    result = run_smoke(url, SmokeRequest(expect_body="hello"), sleep=sleeps)
    assert (result.status, result.attempts, result.excerpt) == (200, 3, "hello world")
    assert len(script.seen) == 3
    assert sleeps == sorted(sleeps) and sleeps[0] < sleeps[1]  # backoff grows


def test_request_shape_and_id_token(server: tuple[str, Script]) -> None:
    url, script = server
    smoke = SmokeRequest(method="POST", path="/orders?dry=1", json={"id": 7},
                         headers={"ce-type": "google.cloud.pubsub.topic.v1.messagePublished"})
    run_smoke(url + "/", smoke, token="tok-123")
    seen = script.seen[0]
    assert (seen.method, seen.path) == ("POST", "/orders?dry=1")
    assert json.loads(seen.body) == {"id": 7}
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer tok-123"
    assert seen.headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"


def test_own_authorization_header_keeps_the_token_in_x_serverless(server: tuple[str, Script]) -> None:
    url, script = server
    run_smoke(url, SmokeRequest(method="PUT", body="raw", headers={"Authorization": "Basic abc"}),
              token="tok")
    seen = script.seen[0]
    assert (seen.headers["Authorization"], seen.headers["X-Serverless-Authorization"]) == \
        ("Basic abc", "Bearer tok")
    assert seen.body == b"raw"


def test_no_token_header_for_public_services(server: tuple[str, Script]) -> None:
    url, script = server
    run_smoke(url, SmokeRequest())
    assert "Authorization" not in script.seen[0].headers


def test_wrong_status_fails_at_once_with_url_statuses_and_body(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(404, "no route for /nope", {})]
    with pytest.raises(SmokeTestFailed) as raised:
        run_smoke(url, SmokeRequest(path="/nope"))
    message = str(raised.value)
    assert f"{url}/nope" in message
    assert "expected status 200, got 404" in message and "no route for /nope" in message
    assert "smoke.path" in message  # what to do
    assert len(script.seen) == 1  # a 404 is an answer, not a cold start


def test_wrong_body_fails_with_an_excerpt(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(200, "Hello, " + "x" * 500, {})]
    with pytest.raises(SmokeTestFailed) as raised:
        run_smoke(url, SmokeRequest(expect_body="goodbye"))
    message = str(raised.value)
    assert "does not contain 'goodbye'" in message and "Hello, xxx" in message
    assert "x" * 300 not in message  # an excerpt, not the whole body


def test_deadline_exceeded_reports_the_last_answer(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, "Service Unavailable", {})]
    with pytest.raises(SmokeTestFailed) as raised:
        run_smoke(url, SmokeRequest(deadline_s=1))
    message = str(raised.value)
    assert "expected status 200, got 503 (still failing at the deadline)" in message
    assert "Service Unavailable" in message
    assert len(script.seen) >= 2


def test_connection_refused_until_the_deadline() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SmokeTestFailed, match=r"http://127.0.0.1:\d+/: no answer after \d+ attempts"):
        run_smoke(f"http://127.0.0.1:{port}", SmokeRequest(deadline_s=1))


def test_429_honours_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, "slow down", {"Retry-After": "2"}), (200, "ok", {})]
    sleeps = Sleeps()
    assert run_smoke(url, SmokeRequest(), sleep=sleeps).attempts == 2
    assert sleeps == [2.0]


def test_expected_error_status_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, "maintenance", {})]
    assert run_smoke(url, SmokeRequest(expect_status=503)).attempts == 1


def test_403_is_retried_only_for_public_services(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(403, "Forbidden", {}), (200, "ok", {})]
    assert run_smoke(url, SmokeRequest(), public=True, sleep=Sleeps()).attempts == 2
    script.seen.clear()
    with pytest.raises(SmokeTestFailed, match=r"got 403.*the service is private"):
        run_smoke(url, SmokeRequest())
