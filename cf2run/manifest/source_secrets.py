"""Files in a function's source that look like secrets, found before the source is uploaded.

gcloud's ignore rules stay as they are (a `.gcloudignore` without `.env` ships it, as gcloud
would); cf2run only looks at the names it is about to upload, and opens the few whose name
suggests a secret and whose content decides it (a `.pem` may be a public certificate, a
`.npmrc` may hold only a registry URL). Each finding names the file, what it looks like and
the `.gcloudignore` line that leaves it out. `secret_files: refuse` in the manifest makes them
an error (`check`); by default they are warnings in the log and the report.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Only this much of a candidate file is read.
READ_BYTES = 64 * 1024
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SERVICE_ACCOUNT_KEY = re.compile(rb'"type"\s*:\s*"service_account".*"private_key"|"private_key"'
                                 rb'.*"type"\s*:\s*"service_account"', re.S)
NPM_TOKEN = re.compile(rb"(?m)^\s*(?:[^#;\s]*:)?_(?:authToken|auth|password)\s*=\s*\S")
PASSWORD_LINE = re.compile(rb"(?mi)^\s*password\s*[=:]\s*\S")
DOCKER_AUTHS = re.compile(rb'"auths"\s*:\s*\{\s*"[^"]+"\s*:\s*\{[^}]*"auth"\s*:\s*"[^"]+"')


@dataclass(frozen=True)
class SecretFile:
    """A file about to ship that looks like a secret."""

    name: str  # its path in the archive
    what: str  # "a dotenv file", "a service-account key", ...

    @property
    def ignore_rule(self) -> str:
        """The .gcloudignore line that leaves exactly this file out."""
        return "/" + self.name

    def describe(self) -> str:
        return (f"{self.name} looks like {self.what} and would be uploaded with the source; add "
                f"`{self.ignore_rule}` to .gcloudignore to leave it out")


Check = Callable[[bytes], bool]
ANY: Check = lambda head: True  # noqa: E731 - the name alone decides
#: (file name patterns, what it is, whether its first READ_BYTES confirm it).
RULES: tuple[tuple[tuple[str, ...], str, Check], ...] = (
    ((".env", ".env.*"), "a dotenv file", ANY),
    (("*.pem", "*.key"), "a private key", lambda head: bool(PRIVATE_KEY.search(head))),
    (("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "*.p12", "*.pfx"), "a private key", ANY),
    (("*.json",), "a service-account key", lambda head: bool(SERVICE_ACCOUNT_KEY.search(head))),
    ((".npmrc",), "an .npmrc with a registry token", lambda head: bool(NPM_TOKEN.search(head))),
    ((".pypirc", ".netrc", "_netrc"), "a file with a password", lambda h: bool(PASSWORD_LINE.search(h))
     or b"password " in h),
    ((".git-credentials",), "stored git credentials", ANY),
    ((".dockercfg", "config.json"), "Docker registry credentials", lambda h: bool(DOCKER_AUTHS.search(h))),
)
#: Dotenv files meant to be shipped as documentation of the variables.
HARMLESS = frozenset({".env.example", ".env.sample", ".env.template", ".env.dist"})


def find(files: Iterable[tuple[str, Path]]) -> list[SecretFile]:
    """The files (archive name, path on disk) that look like secrets, in the order given."""
    found = []
    for name, path in files:
        base = name.rsplit("/", 1)[-1]
        if base in HARMLESS:
            continue
        for patterns, what, confirms in RULES:
            if any(fnmatch.fnmatchcase(base, pattern) for pattern in patterns) and confirms(_head(path)):
                found.append(SecretFile(name, what))
                break
    return found


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(READ_BYTES)
    except OSError:
        return b""  # unreadable: packaging says so
