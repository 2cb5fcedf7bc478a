"""The local Cloud Functions: the API through the official clients, the seeded 1st-gen functions
served at their gen1 URLs, and a restart that keeps them.

One local cloud for the module, seeded once: three real builds (two HTTP functions, one event
function), a 2nd-gen function (never built), a hostile zip (refused before any build) and a
function in another project.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import functions_v1, functions_v2
from serving import wait_serving

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.cloudfunctions.seed import SeedError, zip_directory
from cf2run.localcloud.server import LocalCloud

US = "projects/local-project/locations/us-central1"
EU = "projects/local-project/locations/europe-west1"
HELLO, PRIVATE, ON_EVENT = f"{US}/functions/hello", f"{EU}/functions/private", f"{US}/functions/on_event"
HOSTILE, GEN2 = f"{US}/functions/hostile", f"{US}/functions/gen2"
ELSEWHERE = "projects/other-project/locations/us-east1/functions/elsewhere"
HELLO_MAIN = """\
import os

def hello(request):
    return f"{request.path} {os.environ.get('GREETING', '')}"
"""
EVENT_MAIN = """\
def on_event(data, context):
    print("EVENT", data, context.event_type, context.resource)
    if data.get("fail"):
        raise RuntimeError("asked to fail")
"""
PUBLISH = "providers/cloud.pubsub/eventTypes/topic.publish"
PUBLIC: dict[str, object] = {"bindings": [{"role": "roles/cloudfunctions.invoker", "members": ["allUsers"]}]}


def write_function(seed: Path, folder: str, definition: dict[str, object], main: str | None = None,
                   policy: dict[str, object] | None = None, file: str = "function.json") -> Path:
    (seed / folder).mkdir(parents=True)
    (seed / folder / file).write_text(json.dumps(definition))
    if main is not None:
        (seed / folder / "source").mkdir()
        (seed / folder / "source" / "main.py").write_text(main)
    if policy is not None:
        (seed / folder / "iam.json").write_text(json.dumps(policy))
    return seed / folder


def write_seed(seed: Path) -> None:
    write_function(seed, "hello", {"entryPoint": "hello", "runtime": "python311", "httpsTrigger": {},
                                   "availableMemoryMb": 512, "environmentVariables": {"GREETING": "hi"},
                                   "labels": {"team": "a"}}, HELLO_MAIN, PUBLIC)
    write_function(seed, "private", {"name": PRIVATE, "entryPoint": "hello", "runtime": "python311",
                                     "httpsTrigger": {}}, HELLO_MAIN)
    write_function(seed, "on_event", {"entryPoint": "on_event", "runtime": "python311", "eventTrigger": {
        "eventType": PUBLISH, "resource": "projects/local-project/topics/t", "failurePolicy": {"retry": {}}}},
        EVENT_MAIN)
    write_function(seed, "gen2", {"buildConfig": {"runtime": "python312", "entryPoint": "x"}},
                   file="function.v2.json")
    write_function(seed, "elsewhere", {"name": ELSEWHERE, "buildConfig": {"runtime": "python312"}},
                   file="function.v2.json")
    hostile = write_function(seed, "hostile", {"entryPoint": "h", "runtime": "python311", "httpsTrigger": {}})
    with zipfile.ZipFile(hostile / "source.zip", "w") as archive:
        archive.writestr("../escaped.py", "x = 1\n")
        archive.writestr("main.py", "def h(request):\n    return 'x'\n")


@dataclass
class Seeded:
    cloud: LocalCloud
    clients: Cloud
    seed: Path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("cloudfunctions")
    write_seed(root / "seed")
    cloud = LocalCloud(state_dir=root / "state").start()
    holder = Seeded(cloud, Cloud.local(cloud.endpoints), root / "seed")
    try:
        cloud.seed_functions(root / "seed")
        yield holder
    finally:
        cloud.close()
        holder.cloud.close()  # the restart test's


def v2_listing(clients: Cloud, parent: str) -> dict[str, str]:
    return {f.name: f.environment.name for f in clients.functions_v2.list_functions(parent=parent)}


def test_v2_lists_every_region_with_its_environment(seeded: Seeded) -> None:
    everywhere = v2_listing(seeded.clients, "projects/local-project/locations/-")
    assert everywhere == {HELLO: "GEN_1", PRIVATE: "GEN_1", ON_EVENT: "GEN_1", HOSTILE: "GEN_1",
                          GEN2: "GEN_2"}
    assert v2_listing(seeded.clients, EU) == {PRIVATE: "GEN_1"}
    assert v2_listing(seeded.clients, "projects/empty-project/locations/-") == {}
    pages = seeded.clients.functions_v2.list_functions(
        request={"parent": "projects/local-project/locations/-", "page_size": 2}).pages
    assert [len(p.functions) for p in pages] == [2, 2, 1]
    shaped = seeded.clients.functions_v2.get_function(name=HELLO)
    assert shaped.service_config.available_memory == "512M"
    assert shaped.service_config.environment_variables == {"GREETING": "hi"}
    assert shaped.build_config.runtime == "python311"
    assert shaped.state == functions_v2.Function.State.ACTIVE


def test_v1_get_has_the_settings_and_what_the_service_sets(seeded: Seeded) -> None:
    hello = seeded.clients.functions.get_function(name=HELLO)
    assert (hello.entry_point, hello.runtime, hello.available_memory_mb) == ("hello", "python311", 512)
    assert hello.environment_variables == {"GREETING": "hi"} and hello.labels == {"team": "a"}
    assert hello.status == functions_v1.CloudFunctionStatus.ACTIVE and hello.version_id == 1
    assert hello.https_trigger.url == f"{seeded.cloud.endpoints.functions}/hello"
    assert hello.docker_registry == functions_v1.CloudFunction.DockerRegistry.ARTIFACT_REGISTRY
    assert hello.update_time and hello.build_id and hello.timeout.total_seconds() == 60
    event = seeded.clients.functions.get_function(name=ON_EVENT)
    assert "https_trigger" not in event and event.event_trigger.event_type == PUBLISH
    assert "retry" in event.event_trigger.failure_policy
    listed = seeded.clients.functions.list_functions(request={"parent": "projects/local-project/locations/-"})
    assert {f.name for f in listed} == {HELLO, PRIVATE, ON_EVENT, HOSTILE}  # v1: 1st gen only


def test_download_url_fetches_the_deployed_zip_without_credentials(seeded: Seeded) -> None:
    for name, expected in ((HELLO, zip_directory(seeded.seed / "hello" / "source")),
                           (HOSTILE, (seeded.seed / "hostile" / "source.zip").read_bytes())):
        url = seeded.clients.functions.generate_download_url(request={"name": name}).download_url
        assert httpx.get(url, timeout=10).content == expected
    tampered = url.replace("Signature=", "Signature=x")
    assert httpx.get(tampered, timeout=10).status_code == 403


def test_iam_policy_is_the_seeded_one(seeded: Seeded) -> None:
    policy = seeded.clients.functions.get_iam_policy(request={"resource": HELLO})
    assert [(b.role, list(b.members)) for b in policy.bindings] == [("roles/cloudfunctions.invoker",
                                                                     ["allUsers"])]
    assert not seeded.clients.functions.get_iam_policy(request={"resource": PRIVATE}).bindings


def test_a_missing_function_is_not_found(seeded: Seeded) -> None:
    with pytest.raises(gexc.NotFound, match="Function nope in region us-central1 in project "
                                            "local-project does not exist"):
        seeded.clients.functions.get_function(name=f"{US}/functions/nope")
    with pytest.raises(gexc.NotFound):
        seeded.clients.functions_v2.get_function(name=f"{US}/functions/nope")


def test_a_caller_without_permission_and_a_disabled_api_are_refused(seeded: Seeded) -> None:
    settings = seeded.cloud.settings
    try:
        settings.functions_denied = True
        listing = ("Permission 'cloudfunctions.functions.list' denied on "
                   "'projects/local-project/locations/-/functions'")
        with pytest.raises(gexc.PermissionDenied, match=re.escape(listing)):
            v2_listing(seeded.clients, "projects/local-project/locations/-")
        with pytest.raises(gexc.PermissionDenied, match=re.escape("'cloudfunctions.functions.get'")):
            seeded.clients.functions.get_function(name=HELLO)
        settings.functions_denied, settings.functions_api_disabled = False, True
        with pytest.raises(gexc.PermissionDenied) as refused:
            seeded.clients.functions.get_function(name=HELLO)
        assert refused.value.reason == "SERVICE_DISABLED"
        assert refused.value.message.startswith("Cloud Functions API has not been used in project ")
    finally:
        settings.functions_denied = settings.functions_api_disabled = False


def test_a_public_http_function_answers_on_its_gen1_url_without_its_name(seeded: Seeded) -> None:
    url = f"{seeded.cloud.endpoints.functions}/hello"
    assert httpx.get(f"{url}/a/b?x=1", timeout=10).text == "/a/b hi"
    assert httpx.get(url, timeout=10).text == "/ hi"
    assert httpx.get(f"{seeded.cloud.endpoints.functions}/hostile", timeout=10).status_code == 404
    assert httpx.get(f"{seeded.cloud.endpoints.functions}/on_event", timeout=10).status_code == 404


def test_a_private_http_function_wants_an_id_token_for_its_url(seeded: Seeded) -> None:
    url = f"{seeded.cloud.endpoints.functions}/private"
    assert httpx.get(url, timeout=10).status_code == 403
    other = seeded.cloud.id_token(f"{seeded.cloud.endpoints.functions}/hello")
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10).status_code == 401
    token = seeded.cloud.id_token(url)
    answer = httpx.get(f"{url}/x", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert (answer.status_code, answer.text) == (200, "/x ")


def test_call_function_delivers_a_legacy_event(seeded: Seeded) -> None:
    done = seeded.clients.functions.call_function(name=ON_EVENT, data='{"n": 7}')
    assert done.execution_id and not done.error
    # gen1's context.resource of a Pub/Sub event is an object, not the topic's name alone
    assert (f"EVENT {{'n': 7}} {PUBLISH} {{'service': 'pubsub.googleapis.com', 'name': "
            "'projects/local-project/topics/t', 'type': 'type.googleapis.com/google.pubsub.v1."
            "PubsubMessage'}") in seeded.cloud.logs("on_event")
    failed = seeded.clients.functions.call_function(name=ON_EVENT, data='{"fail": true}')
    assert failed.error and failed.execution_id != done.execution_id
    with pytest.raises(gexc.FailedPrecondition, match="escapes the archive"):
        seeded.clients.functions.call_function(name=HOSTILE, data="{}")


def test_a_bad_seed_is_refused_naming_the_file_and_nothing_changes(seeded: Seeded, tmp_path: Path) -> None:
    write_function(tmp_path / "bad", "fine", {"buildConfig": {}}, file="function.v2.json")
    broken = write_function(tmp_path / "bad", "noruntime", {"httpsTrigger": {}}, "def f(r): pass\n")
    with pytest.raises(SeedError, match=re.escape(f"{broken / 'function.json'}: runtime is missing")):
        seeded.cloud.seed_functions(tmp_path / "bad")
    (broken / "function.json").write_text('{"runtime": "python311", "httpsTrigger": {}, "memory": 1}')
    with pytest.raises(SeedError, match=re.escape("function.json is not a CloudFunction")):
        seeded.cloud.seed_functions(tmp_path / "bad")
    assert f"{US}/functions/fine" not in v2_listing(seeded.clients, "projects/local-project/locations/-")


def test_seeding_again_changes_only_what_changed(seeded: Seeded) -> None:
    before = seeded.clients.functions.get_function(name=HELLO)
    seeded.cloud.seed_functions(seeded.seed)
    assert seeded.clients.functions.get_function(name=HELLO) == before  # same build id: not rebuilt
    (seeded.seed / "gen2" / "function.v2.json").write_text(json.dumps({"labels": {"changed": "yes"}}))
    seeded.cloud.seed_functions(seeded.seed)
    assert seeded.clients.functions_v2.get_function(name=GEN2).labels == {"changed": "yes"}


def test_an_internal_only_function_keeps_outside_callers_out(seeded: Seeded) -> None:
    definition = seeded.seed / "private" / "function.json"
    definition.write_text(json.dumps({**json.loads(definition.read_text()),
                                      "ingressSettings": "ALLOW_INTERNAL_ONLY"}))
    seeded.cloud.seed_functions(seeded.seed)  # a changed seed: version 2, built again
    assert seeded.clients.functions.get_function(name=PRIVATE).version_id == 2
    url = f"{seeded.cloud.endpoints.functions}/private"
    token = {"Authorization": f"Bearer {seeded.cloud.id_token(url)}"}
    assert httpx.get(url, headers=token, timeout=10).status_code == 404
    seeded.cloud.settings.caller_in_vpc = True
    try:
        assert httpx.get(url, headers=token, timeout=10).status_code == 200
    finally:
        seeded.cloud.settings.caller_in_vpc = False


def test_serve_refuses_a_bad_seed_directory(tmp_path: Path) -> None:
    cf2run = Path(sys.executable).with_name("cf2run")
    run = subprocess.run([str(cf2run), "localcloud", "serve", "--state-dir", str(tmp_path / "state"),
                          "--seed-functions", str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and f"{tmp_path / 'missing'} does not exist" in run.stderr


def test_serve_lists_every_seeded_function_as_soon_as_it_says_it_runs(tmp_path: Path) -> None:
    """`serve --seed-functions` takes the seed before endpoints.json says the cloud runs: the first
    moment a command may use it, discover's listing already has every function (it used to
    write its endpoints first and seed after, so a command in between saw part of the list)."""
    write_seed(tmp_path / "seed")
    state = tmp_path / "state"
    cf2run = Path(sys.executable).with_name("cf2run")
    process = subprocess.Popen([str(cf2run), "localcloud", "serve", "--state-dir", str(state),
                                "--seed-functions", str(tmp_path / "seed")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        endpoints = wait_serving(process, state, timeout_s=300)
        listed = v2_listing(Cloud.local(endpoints), "projects/local-project/locations/-")
        assert set(listed) == {HELLO, PRIVATE, ON_EVENT, HOSTILE, GEN2}, listed
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_restarted_local_cloud_serves_them_again(seeded: Seeded) -> None:  # keep last: it restarts
    url = f"{seeded.cloud.endpoints.functions}/hello"
    seeded.cloud.close()
    seeded.cloud = LocalCloud(state_dir=seeded.cloud.state_dir).start()
    clients = Cloud.local(seeded.cloud.endpoints)
    assert seeded.cloud.endpoints.functions + "/hello" == url
    assert httpx.get(f"{url}/again", timeout=10).text == "/again hi"
    assert set(v2_listing(clients, "projects/local-project/locations/-")) == {
        HELLO, PRIVATE, ON_EVENT, HOSTILE, GEN2}
    assert clients.functions.call_function(name=ON_EVENT, data="{}").error == ""
