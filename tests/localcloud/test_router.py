"""The router's stable URLs: traffic split, private access with ID tokens, proxying; and the
metadata server that hands out those tokens. Real sockets, trivial in-thread backends."""

from __future__ import annotations

import collections
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cf2run.localcloud.cloudrun.router import Router, running_only
from cf2run.localcloud.iam.accounts import GCLOUD_CLIENT_IDS
from cf2run.localcloud.iam.metadata import LoopbackServer, MetadataServer, QuietHandler, TokenAuthority


class EchoHandler(QuietHandler):
    """Answers with JSON saying which backend it is and what it received."""

    name = "?"

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        if self.path.startswith("/stream"):  # a response without Content-Length, in chunks
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                data = f"part{i};".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = {"backend": self.name, "method": self.command, "path": self.path, "body": body,
                  "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.send_body(200, json.dumps(answer).encode(), "application/json", [("X-Backend", self.name)])

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _echo


@pytest.fixture
def backends() -> Iterator[dict[str, str]]:
    """Three echo backends: revision name -> address."""
    servers = {name: LoopbackServer(type(f"Echo{name}", (EchoHandler,), {"name": name}))
               for name in ("rev-a", "rev-b", "rev-c")}
    yield {name: server.url.removeprefix("http://") for name, server in servers.items()}
    for server in servers.values():
        server.stop()


@pytest.fixture
def tokens(tmp_path: Path) -> TokenAuthority:
    return TokenAuthority(tmp_path)


@pytest.fixture
def addresses(backends: dict[str, str]) -> dict[str, str | None]:
    """What the router resolves revisions with: tests take revisions down by editing it."""
    return dict(backends)


@pytest.fixture
def router(tokens: TokenAuthority, addresses: dict[str, str | None]) -> Iterator[Router]:
    router = Router(tokens, backend=running_only(lambda revision: addresses.get(revision)))
    yield router
    router.stop_all()


def test_traffic_split_follows_percents(router: Router) -> None:
    url = router.open("svc")
    router.route("svc", [("rev-a", 75), ("rev-b", 25), ("rev-c", 0)], public=True)
    with httpx.Client() as client:
        seen = collections.Counter(client.get(f"{url}/").json()["backend"] for _ in range(200))
    assert seen["rev-c"] == 0
    assert 120 <= seen["rev-a"] <= 180, seen  # expected 150; more than 5 standard deviations of room


def test_private_url_needs_a_token_for_its_own_audience(router: Router, tokens: TokenAuthority) -> None:
    url = router.open("svc")
    router.route("svc", [("rev-a", 100)], public=False)
    with httpx.Client() as client:
        anonymous = client.get(f"{url}/hello?x=1")
        assert anonymous.status_code == 403
        assert "Your client does not have permission to get URL <code>/hello</code>" in anonymous.text

        # A token Cloud Run refuses (another audience, not Google's, an access token) is 401, not 403
        # (the "401 Unauthorized" page of google/adk-python#3814).
        other = tokens.mint("http://127.0.0.1:1")
        refused = client.get(f"{url}/hello", headers={"Authorization": f"Bearer {other}"})
        assert refused.status_code == 401
        assert "Your client does not have permission to the requested URL <code>/hello</code>" in refused.text
        assert client.get(url, headers={"Authorization": "Bearer not.a.token"}).status_code == 401
        expired = tokens.mint(url, lifetime_s=-1)
        assert client.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
        access, _ = tokens.mint_access("someone@example.com", ["https://www.googleapis.com/auth/cloud-platform"])
        assert client.get(url, headers={"Authorization": f"Bearer {access}"}).status_code == 401

        # User ID tokens issued to gcloud's OAuth clients are taken (GoogleCloudPlatform/cloud-run-proxy#8).
        for client_id in GCLOUD_CLIENT_IDS:
            user = tokens.mint(client_id, "developer@example.com")
            assert client.get(url, headers={"Authorization": f"Bearer {user}"}).status_code == 200
        assert client.get(url, headers={"Authorization": f"Bearer {tokens.mint('other-client')}"}
                          ).status_code == 401

        token = tokens.mint(url)
        answer = client.get(f"{url}/hello", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        forwarded = answer.json()["headers"]["authorization"]
        assert forwarded.startswith("Bearer " + token.rsplit(".", 1)[0])
        assert forwarded.endswith(".SIGNATURE_REMOVED_BY_GOOGLE")  # as Cloud Run hands it on

        serverless = client.get(url, headers={"X-Serverless-Authorization": f"Bearer {token}",
                                              "Authorization": "Bearer app-level-token"})
        assert serverless.status_code == 200
        assert serverless.json()["headers"]["authorization"] == "Bearer app-level-token"


def test_a_tag_url_accepts_the_audiences_it_is_given(router: Router, tokens: TokenAuthority) -> None:
    service_url = router.open("svc")
    tag_url = router.open("svc/candidate")
    assert tag_url != service_url
    router.route("svc/candidate", [("rev-b", 100)], public=False, audiences=[tag_url, service_url])
    with httpx.Client() as client:
        for audience in (tag_url, service_url + "/"):
            answer = client.get(tag_url, headers={"Authorization": f"Bearer {tokens.mint(audience)}"})
            assert answer.status_code == 200 and answer.json()["backend"] == "rev-b"


@pytest.mark.parametrize("ingress", ["INGRESS_TRAFFIC_INTERNAL_ONLY",
                                     "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"])
def test_internal_ingress_answers_404_outside_the_vpc_before_any_token_check(
        tokens: TokenAuthority, addresses: dict[str, str | None], ingress: str) -> None:
    """Cloud Run's answer to a caller outside the VPC (securing/ingress): Google's 404 page, on
    the service URL and every tag URL alike (ingress is the service's), whatever the token."""
    inside = False
    router = Router(tokens, backend=running_only(lambda revision: addresses.get(revision)),
                    inside_vpc=lambda: inside)
    try:
        service_url, tag_url = router.open("svc"), router.open("svc#candidate")
        router.route("svc", [("rev-a", 100)], public=True, ingress=ingress)
        router.route("svc#candidate", [("rev-b", 100)], public=False, audiences=[service_url],
                     ingress=ingress)
        token = {"Authorization": f"Bearer {tokens.mint(service_url)}"}
        with httpx.Client() as client:
            for url, headers in ((service_url, {}), (service_url, token), (tag_url, token)):
                refused = client.get(f"{url}/hello?x=1", headers=headers)
                assert refused.status_code == 404
                assert refused.headers["Content-Type"].startswith("text/html")
                assert "The requested URL <code>/hello</code> was not found on this server." in refused.text
                assert "X-Backend" not in refused.headers  # no revision saw it
            inside = True  # the worker now runs inside the VPC
            assert client.get(service_url).json()["backend"] == "rev-a"
            assert client.get(tag_url, headers=token).json()["backend"] == "rev-b"
            assert client.get(tag_url).status_code == 403  # IAM still applies inside
            inside = False
            router.route("svc", [("rev-a", 100)], public=True, ingress="INGRESS_TRAFFIC_ALL")
            assert client.get(service_url).json()["backend"] == "rev-a"
    finally:
        router.stop_all()


def test_no_ready_revision_answers_503(router: Router, addresses: dict[str, str | None]) -> None:
    url = router.open("svc")
    with httpx.Client() as client:
        assert client.get(url).status_code == 503  # no route yet
        router.route("svc", [], public=True)
        assert client.get(url).status_code == 503
        router.route("svc", [("rev-a", 50), ("rev-b", 50)], public=True)
        addresses["rev-a"] = None  # rev-a has no instance: its share is refused, not moved to rev-b
        answers = [client.get(url) for _ in range(40)]  # both kinds: p = 1 - 2e-12
        assert {a.status_code for a in answers} == {200, 503}
        assert {a.json()["backend"] for a in answers if a.status_code == 200} == {"rev-b"}
        router.route("svc", [("rev-b", 100)], public=True)
        addresses["rev-b"] = "127.0.0.1:1"  # nothing listens there
        answer = client.get(url)
        assert answer.status_code == 503 and "refused" in answer.text


def test_requests_and_answers_pass_through(router: Router) -> None:
    url = router.open("svc")
    router.route("svc", [("rev-a", 100)], public=True)
    with httpx.Client() as client:
        posted = client.post(f"{url}/api/items?q=a%20b&n=2", content=b'{"x": 1}',
                             headers={"Content-Type": "application/json", "X-Custom": "yes"})
        assert posted.status_code == 200
        echo = posted.json()
        assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/api/items?q=a%20b&n=2", '{"x": 1}')
        assert echo["headers"]["x-custom"] == "yes"
        assert echo["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert posted.headers["X-Backend"] == "rev-a"

        assert client.get(f"{url}/stream").text == "part0;part1;part2;part3;part4;"
        assert client.delete(f"{url}/x").json()["method"] == "DELETE"
        head = client.head(f"{url}/x")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0

    # A chunked request body (no Content-Length), over a raw HTTP/1.1 connection.
    conn = http.client.HTTPConnection(url.removeprefix("http://"))
    conn.request("PUT", "/upload", body=iter([b"hello ", b"chunked ", b"world"]), encode_chunked=True)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert (answer["method"], answer["body"]) == ("PUT", "hello chunked world")


def test_urls_are_stable_across_close_and_reopen(router: Router) -> None:
    url = router.open("svc")
    assert router.open("svc") == url
    router.close("svc")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    port = int(url.rsplit(":", 1)[1])
    assert router.open("svc", port) == url  # what a restarted local cloud does with the saved port
    router.route("svc", [("rev-c", 100)], public=True)
    assert httpx.get(url).json()["backend"] == "rev-c"


def test_metadata_server_tokens_open_private_urls(router: Router, tokens: TokenAuthority) -> None:
    url = router.open("svc")
    router.route("svc", [("rev-a", 100)], public=False)
    with MetadataServer(tokens) as metadata, httpx.Client() as client:
        identity = f"{metadata.url}/computeMetadata/v1/instance/service-accounts/default/identity"
        flavor = {"Metadata-Flavor": "Google"}
        assert client.get(identity, params={"audience": url}).status_code == 403
        assert client.get(identity, headers=flavor).status_code == 400
        answer = client.get(identity, params={"audience": url}, headers=flavor)
        assert answer.status_code == 200 and answer.headers["Metadata-Flavor"] == "Google"
        token = answer.text
        assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        project = client.get(f"{metadata.url}/computeMetadata/v1/project/project-id", headers=flavor)
        assert project.text == "local-project"


def test_google_auth_fetches_tokens_from_the_metadata_server(tokens: TokenAuthority) -> None:
    """What a user's script does: google-auth's fetch_id_token, pointed at the local server."""
    audience = "http://127.0.0.1:9999"
    script = ("import google.auth.transport.requests as r, google.oauth2.id_token as t\n"
              f"print(t.fetch_id_token(r.Request(), {audience!r}))\n")
    with MetadataServer(tokens) as metadata:
        env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
        env.update(GCE_METADATA_HOST=metadata.address, GCE_METADATA_IP=metadata.address)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0, done.stderr
    assert tokens.verify(done.stdout.strip(), [audience])


def test_tokens_survive_a_restart_and_expire(tmp_path: Path) -> None:
    first = TokenAuthority(tmp_path)
    token = first.mint("http://127.0.0.1:8080")
    key = tmp_path / "metadata" / "signing.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert TokenAuthority(tmp_path).verify(token, "http://127.0.0.1:8080")
    assert not TokenAuthority(tmp_path / "other").verify(token, "http://127.0.0.1:8080")
    claims = first.claims(token)
    assert claims is not None and claims["exp"] - claims["iat"] == 3600
    assert claims["email"].endswith(".iam.gserviceaccount.com")
