"""Every call the pipeline makes with a set of credentials (tests/test_credentials.py), importable by a
subprocess too (the metadata-server case: google-auth reads GCE_METADATA_HOST when it is imported)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import httpx
from google.auth import jwt

from cf2run.gcp.cloud import Cloud
from cf2run.gcp.credentials import application_default
from cf2run.gcp.oci import ImageRef
from cf2run.localcloud.endpoints import Endpoints


def exercise(cloud: Cloud, service: str, uri: str, image: str) -> str:
    """Cloud Storage, Cloud Build, the Artifact Registry token exchange, Cloud Run admin, IAM and the
    smoke test's ID token, each as the pipeline calls it; returns whom the private service saw."""
    bucket = cloud.storage.create_bucket(f"cred-{uuid.uuid4().hex[:12]}")
    bucket.blob("source.tgz").upload_from_string(b"archive")
    list(cloud.builds.list_builds(project_id=cloud.project, filter="tags=\"none\""))
    assert cloud.registry.head_manifest(ImageRef.parse(image)) is not None
    assert cloud.services.get_service(name=service).uri == uri
    cloud.services.get_iam_policy(request={"resource": service})
    token = cloud.id_token(uri)
    answer = httpx.get(uri, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return str(jwt.decode(token, verify=False)["email"])


if __name__ == "__main__":  # python tests/credential_calls.py STATE_DIR SERVICE URI IMAGE
    state_dir, service, uri, image = sys.argv[1:5]
    endpoints = Endpoints.read(Path(state_dir))
    caller = exercise(Cloud.local(endpoints, base=application_default), service, uri, image)
    print(json.dumps({"caller": caller}))
