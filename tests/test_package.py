"""The source tarball: deterministic bytes and gcloud's ignore rules (REFERENCE §1)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Bucket, Client

from cf2run.errors import Cf2RunError, SourceError
from cf2run.localcloud.storage.emulator import StorageServer
from cf2run.manifest import source_limits
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import SourceArchive
from tasks import package
from tasks.package import make_tarball, upload_archive


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def members(source: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(make_tarball(source).read_all()), mode="r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def names(source: Path) -> list[str]:
    return sorted(members(source))


def test_same_tree_same_bytes_whatever_the_file_times(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "x = 1\n", "lib/util.py": "y = 2\n", "requirements.txt": ""})
    first = make_tarball(source)
    for path in [source, *source.rglob("*")]:
        os.utime(path, (1_000_000_000, 1_500_000_000))
    second = make_tarball(source)
    assert second.read_all() == first.read_all()
    assert second.sha256 == first.sha256
    (source / "main.py").write_text("x = 2\n")
    assert make_tarball(source).sha256 != first.sha256


def test_same_content_elsewhere_same_sha(tmp_path: Path) -> None:
    files = {"index.js": "exports.f = () => 1;\n", "package.json": "{}\n"}
    one = make_tarball(tree(tmp_path / "one", files))
    two = make_tarball(tree(tmp_path / "elsewhere" / "two", dict(reversed(files.items()))))
    assert one.sha256 == two.sha256
    assert one.files == 2


def test_entries_are_sorted_with_directories_and_root_ownership(tmp_path: Path) -> None:
    # REFERENCE §1: directories added explicitly, uid/gid 0, owner root.
    source = tree(tmp_path / "src", {"b.py": "", "a/z.py": "", "a/c.py": ""})
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o700)
    (source / "b.py").chmod(0o600)
    with tarfile.open(fileobj=io.BytesIO(make_tarball(source).read_all()), mode="r:gz") as tar:
        infos = tar.getmembers()
    assert [info.name for info in infos] == ["a", "a/c.py", "a/z.py", "b.py", "run.sh"]
    assert infos[0].isdir()
    for info in infos:
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "root", "root", 0)
    modes = {info.name: info.mode for info in infos}
    assert modes == {"a": 0o755, "a/c.py": 0o644, "a/z.py": 0o644, "b.py": 0o644, "run.sh": 0o755}


def test_gzip_header_has_no_time_and_no_name(tmp_path: Path) -> None:
    data = make_tarball(tree(tmp_path / "src", {"main.py": ""})).read_all()
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\0\0\0\0"          # MTIME 0
    assert data[3] & 0x08 == 0                # no FNAME
    assert gzip.decompress(data)              # a valid gzip stream


def test_gcloudignore_rules_apply_with_gitignore_semantics(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {
        ".gcloudignore": "# comment\n*.log\n!keep.log\nbuild/\n/secrets.txt\n",
        "main.py": "", "debug.log": "", "keep.log": "", "build/out.py": "",
        "secrets.txt": "", "sub/secrets.txt": "", "sub/trace.log": "",
        ".gitignore": "main.py\n",  # not read: .gcloudignore takes precedence
    })
    assert names(source) == [".gcloudignore", ".gitignore", "keep.log", "main.py", "sub",
                             "sub/secrets.txt"]


def test_gcloudignore_include_of_gitignore(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {
        ".gcloudignore": ".gcloudignore\n#!include:.gitignore\n",
        ".gitignore": "__pycache__/\n*.pyc\n",
        "main.py": "", "__pycache__/main.cpython-311.pyc": "", "old.pyc": "",
    })
    assert names(source) == [".gitignore", "main.py"]


def test_gcloudignore_include_of_missing_file_is_an_error(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {".gcloudignore": "#!include:.gitignore\n", "main.py": ""})
    with pytest.raises(SourceError, match=r"\.gcloudignore: #!include:\.gitignore: cannot read"):
        make_tarball(source)


def test_default_rules_in_a_git_checkout(tmp_path: Path) -> None:
    # REFERENCE §1: no .gcloudignore, .git or .gitignore present -> .gcloudignore, .git,
    # .gitignore plus .gitignore's lines are ignored.
    source = tree(tmp_path / "src", {
        ".git/HEAD": "ref: refs/heads/main\n", ".gitignore": "node_modules/\n.env\n",
        "index.js": "", "node_modules/dep/index.js": "", ".env": "SECRET=1\n", ".eslintrc": "",
    })
    assert names(source) == [".eslintrc", "index.js"]


def test_default_rules_with_only_a_git_directory(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {".git/HEAD": "", "main.py": "", "notes.log": ""})
    assert names(source) == ["main.py", "notes.log"]


def test_no_ignore_file_means_everything_is_uploaded(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "", "node_modules/x.js": "", "a.log": "", ".env": ""})
    (source / "empty").mkdir()
    assert names(source) == [".env", "a.log", "empty", "main.py", "node_modules", "node_modules/x.js"]


def test_symlink_inside_the_tree_is_kept_as_a_link(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "", "lib/real.py": ""})
    (source / "alias.py").symlink_to("lib/real.py")
    (source / "absolute.py").symlink_to(source / "lib" / "real.py")
    found = members(source)
    assert found["alias.py"].issym() and found["alias.py"].linkname == "lib/real.py"
    # an absolute link into the tree is stored relative, so it works where the archive lands
    assert found["absolute.py"].issym() and found["absolute.py"].linkname == "lib/real.py"


@pytest.mark.parametrize("target", ["../../outside.py", "/etc/passwd"])
def test_symlink_leaving_the_tree_is_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "outside.py").write_text("")
    source = tree(tmp_path / "src", {"main.py": ""})
    (source / "lib").mkdir()
    (source / "lib" / "escape.py").symlink_to(target)
    with pytest.raises(SourceError, match=f"symlink lib/escape.py -> {target} points outside"):
        make_tarball(source)


def test_ignored_escaping_symlink_is_fine(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "", ".gcloudignore": "venv/\n"})
    (source / "venv").mkdir()
    (source / "venv" / "python").symlink_to("/usr/bin/python3")
    assert names(source) == [".gcloudignore", "main.py"]


def test_missing_or_empty_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        make_tarball(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SourceError, match="has no files to upload"):
        make_tarball(tmp_path / "empty")
    everything_ignored = tree(tmp_path / "ignored", {".gcloudignore": "*\n", "main.py": ""})
    with pytest.raises(SourceError, match=r"check \.gcloudignore"):
        make_tarball(everything_ignored)


# -- upload: content-addressed, written once (if_generation_match=0), reused afterwards --------


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The official storage client against the local cloud's Cloud Storage (fake-gcs-server)."""
    with StorageServer(tmp_path_factory.mktemp("gcs")) as server:
        yield Client(project="local-project", credentials=AnonymousCredentials(),
                     client_options=ClientOptions(api_endpoint=server.url))


def test_upload_creates_the_bucket_and_reuses_an_existing_object(tmp_path: Path, gcs: Client) -> None:
    tarball = make_tarball(tree(tmp_path / "src", {"main.py": "def f(r):\n    return 'ok'\n"}))
    name = f"source/fn-{tarball.archive_sha256[:16]}.tgz"
    first = upload_archive(gcs, "local-project_cloudbuild", name, tarball)
    assert first.uri == f"gs://local-project_cloudbuild/{name}"
    assert (first.sha256, first.files, first.bytes) == (tarball.sha256, 1, len(tarball.read_all()))
    assert gcs.bucket("local-project_cloudbuild").blob(name).download_as_bytes() == tarball.read_all()
    again = upload_archive(gcs, "local-project_cloudbuild", name, tarball)
    assert again == first  # same generation: nothing was rewritten


def test_an_object_with_other_content_under_the_name_is_an_error(tmp_path: Path, gcs: Client) -> None:
    tarball = make_tarball(tree(tmp_path / "src", {"main.py": "x = 1\n"}))
    gcs.create_bucket("clash-bucket").blob("source/clash.tgz").upload_from_string(b"other")
    with pytest.raises(Cf2RunError, match="exists with other content"):
        upload_archive(gcs, "clash-bucket", "source/clash.tgz", tarball)


def test_a_big_archive_streams_to_storage_in_chunks(tmp_path: Path, gcs: Client) -> None:
    """Over 8 MiB the archive is a temporary file and goes up as a resumable upload in 8 MiB
    chunks; the object holds exactly its bytes."""
    source = tree(tmp_path / "src", {"main.py": "x = 1\n"})
    (source / "model.bin").write_bytes(os.urandom(10 * 2**20))  # incompressible
    with make_tarball(source) as tarball:
        assert tarball.size > package.SPOOL_BYTES
        assert tarball.file._rolled  # type: ignore[attr-defined]  # on disk, not in memory
        archive = upload_archive(gcs, "big-archives", f"source/fn-{tarball.archive_sha256[:16]}.tgz",
                                 tarball)
        stored = gcs.bucket("big-archives").blob(archive.object_name).download_as_bytes()
        assert hashlib.sha256(stored).hexdigest() == tarball.archive_sha256
        assert archive.bytes == tarball.size == len(stored)


def test_the_source_identity_is_the_tar_and_plan_gets_it_without_compressing(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "x = 1\n", "lib/a.py": "y = 2\n"})
    with make_tarball(source) as tarball:
        assert package.source_sha256(source) == tarball.sha256
        assert hashlib.sha256(gzip.decompress(tarball.read_all())).hexdigest() == tarball.sha256


def test_a_source_over_500_mb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    source = tree(tmp_path / "src", {"main.py": "x = 1\n"})
    (source / "data").mkdir()
    with (source / "data" / "dump.sql").open("wb") as sparse:  # 600 MB that take no disk
        sparse.truncate(600 * 10**6)
    with pytest.raises(SourceError, match=r"holds 600 MB to upload; Cloud Functions allowed at most "
                                          r"500 MB uncompressed .*Biggest: data/ 600 MB, main.py 0 MB"
                                          r".*\.gcloudignore") as caught:
        package.source_sha256(source)
    assert "quotas-1st-gen" in str(caught.value)
    (source / ".gcloudignore").write_text("data/\n")
    assert package.source_sha256(source)  # ignored: fine


def test_an_archive_over_100_mb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 MB of incompressible data would take a while to write; the limit is lowered instead
    (the check is the same comparison)."""
    monkeypatch.setattr(source_limits, "MAX_COMPRESSED_BYTES", 1000)
    source = tree(tmp_path / "src", {"main.py": "x = 1\n"})
    (source / "blob.bin").write_bytes(os.urandom(5000))
    with pytest.raises(SourceError, match=r"the archive of .* is 0 MB; Cloud Functions allowed at "
                                          r"most 0 MB compressed"):
        make_tarball(source)


SA_KEY = '{"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----"}'


def test_files_that_look_like_secrets_are_named_with_the_rule_that_leaves_them_out(
        tmp_path: Path, gcs: Client, caplog: pytest.LogCaptureFixture) -> None:
    source = tree(tmp_path / "src", {
        "main.py": "x = 1\n", ".env": "DB_PASSWORD=hunter2\n", ".env.example": "DB_PASSWORD=\n",
        "keys/sa.json": SA_KEY, "package.json": '{"name": "x"}',
        ".npmrc": "//registry.npmjs.org/:_authToken=npm_abc\n", "certs/ca.pem": "-----BEGIN CERTIFICATE-----",
        "certs/server.pem": "-----BEGIN RSA PRIVATE KEY-----\n"})
    spec = FunctionSpec(name="fn", source=source, runtime="python312", entry_point="f")
    archive = package.package(spec, Target(staging_bucket="secrets-warned"), gcs)
    assert archive.warnings == [
        ".env looks like a dotenv file and would be uploaded with the source; add `/.env` to "
        ".gcloudignore to leave it out",
        ".npmrc looks like an .npmrc with a registry token and would be uploaded with the source; add "
        "`/.npmrc` to .gcloudignore to leave it out",
        "certs/server.pem looks like a private key and would be uploaded with the source; add "
        "`/certs/server.pem` to .gcloudignore to leave it out",
        "keys/sa.json looks like a service-account key and would be uploaded with the source; add "
        "`/keys/sa.json` to .gcloudignore to leave it out"]
    assert "fn: .env looks like a dotenv file" in caplog.text
    # gcloud's rules decide what ships, as they would: the warning says what the user asked for.
    (source / ".gcloudignore").write_text("/.env\n/.npmrc\n/certs/server.pem\n/keys/sa.json\n")
    assert package.package(spec, Target(staging_bucket="secrets-warned"), gcs).warnings == []


def test_secret_files_refuse_fails_before_anything_is_uploaded(tmp_path: Path, gcs: Client) -> None:
    source = tree(tmp_path / "src", {"main.py": "x = 1\n", "config/.env.production": "TOKEN=x\n"})
    spec = FunctionSpec(name="fn", source=source, runtime="python312", entry_point="f",
                        secret_files="refuse")
    with pytest.raises(SourceError, match=r"config/.env.production looks like a dotenv file.*add "
                                          r"`/config/.env.production` to .gcloudignore"):
        package.package(spec, Target(staging_bucket="never-created-bucket"), gcs)
    assert gcs.lookup_bucket("never-created-bucket") is None


# -- gcloud's default bucket must be the project's own --------------------------------------------


class ProjectListing(Client):
    """The storage client, with `list_buckets(project=P)` listing only the buckets P owns.

    A stand-in for one thing the local cloud cannot show: fake-gcs-server keeps no bucket owner
    (it lists every bucket for any project), while Google's buckets.list answers the project's
    own. Everything else goes to the real fake-gcs-server.
    """

    owned: set[str]

    def list_buckets(self, *args: object, **kwargs: object) -> Iterator[Bucket]:  # type: ignore[override]
        return (bucket for bucket in super().list_buckets(*args, **kwargs)  # type: ignore[arg-type]
                if bucket.name in self.owned)


def migrate_package(tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch,
                    project: str) -> object:
    spec = FunctionSpec(name="fn", source=tree(tmp_path / "src", {"main.py": "x = 1\n"}),
                        runtime="python312", entry_point="f")
    return package.package(spec, Target(project=project), client)


def test_default_bucket_owned_by_another_project_is_refused(
        tmp_path: Path, gcs: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never upload a user's source into a stranger's bucket: gcloud's storage_api.py
    CreateBucketIfNotExists(check_ownership=True) lists the project's buckets and refuses a
    default bucket that exists but is not among them."""
    squatted = "victim-proj_cloudbuild"
    gcs.create_bucket(squatted)  # created first by someone else
    client = ProjectListing(project="victim-proj", credentials=AnonymousCredentials(),
                            client_options=ClientOptions(api_endpoint=gcs._connection.API_BASE_URL))
    client.owned = set()
    with pytest.raises(Cf2RunError, match="owned by another project") as raised:
        migrate_package(tmp_path, client, monkeypatch, "victim-proj")
    assert "target.staging_bucket" in (raised.value.hint or "")
    assert list(gcs.list_blobs(squatted)) == []  # nothing was uploaded


def test_default_bucket_owned_by_the_project_or_missing_is_used(
        tmp_path: Path, gcs: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ProjectListing(project="owner-proj", credentials=AnonymousCredentials(),
                            client_options=ClientOptions(api_endpoint=gcs._connection.API_BASE_URL))
    client.owned = {"owner-proj_cloudbuild"}
    archive = migrate_package(tmp_path, client, monkeypatch, "owner-proj")  # missing: created
    assert isinstance(archive, SourceArchive) and archive.bucket == "owner-proj_cloudbuild"
    again = migrate_package(tmp_path, client, monkeypatch, "owner-proj")  # exists, owned
    assert again == archive
