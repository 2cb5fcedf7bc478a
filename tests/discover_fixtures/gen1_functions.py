"""Constructed v1 CloudFunction protos (gen1's own shape) for the discovery tests."""

from __future__ import annotations

from datetime import timedelta

from google.cloud import functions_v1 as f
from google.iam.v1 import policy_pb2

PROJECT = "acme-prod"
REGION = "europe-west1"


def name(function_id: str) -> str:
    return f"projects/{PROJECT}/locations/{REGION}/functions/{function_id}"


def every_setting() -> f.CloudFunction:
    """An HTTP function that sets every gen1 setting discover reads."""
    return f.CloudFunction(
        name=name("Orders_API"), description="Takes orders", entry_point="handle", runtime="python312",
        timeout=timedelta(seconds=300), available_memory_mb=1024,
        service_account_email=f"orders@{PROJECT}.iam.gserviceaccount.com",
        https_trigger=f.HttpsTrigger(url=f"https://{REGION}-{PROJECT}.cloudfunctions.net/Orders_API",
                                     security_level=f.HttpsTrigger.SecurityLevel.SECURE_OPTIONAL),
        labels={"team": "orders", "deployment-tool": "cli-gcloud"},
        environment_variables={"MODE": "live", "RETRIES": "3", "PORT": "8080"},
        build_environment_variables={"PIP_INDEX_URL": "https://pypi.acme/simple",
                                     "GOOGLE_RUNTIME_VERSION": "3.12.1"},
        max_instances=50, min_instances=2,
        vpc_connector=f"projects/{PROJECT}/locations/{REGION}/connectors/orders-vpc",
        vpc_connector_egress_settings=f.CloudFunction.VpcConnectorEgressSettings.ALL_TRAFFIC,
        ingress_settings=f.CloudFunction.IngressSettings.ALLOW_INTERNAL_AND_GCLB,
        kms_key_name=f"projects/{PROJECT}/locations/{REGION}/keyRings/r/cryptoKeys/k",
        build_worker_pool=f"projects/{PROJECT}/locations/{REGION}/workerPools/private",
        docker_repository=f"projects/{PROJECT}/locations/{REGION}/repositories/functions",
        build_service_account=f"projects/{PROJECT}/serviceAccounts/builder@{PROJECT}.iam.gserviceaccount.com",
        network="default",
        secret_environment_variables=[
            f.SecretEnvVar(key="DB_PASSWORD", project_id=PROJECT, secret="db-password", version="3"),
            f.SecretEnvVar(key="API_KEY", project_id="123456789", secret="api-key", version="latest")],
        secret_volumes=[f.SecretVolume(mount_path="/etc/tls", project_id=PROJECT, secret="tls", versions=[
            f.SecretVolume.SecretVersion(version="2", path="/cert.pem")])],
        on_deploy_update_policy=f.CloudFunction.OnDeployUpdatePolicy(),
        version_id=7, status=f.CloudFunctionStatus.ACTIVE,
        source_upload_url="https://storage.googleapis.com/uploads/x.zip")


def every_setting_policy() -> policy_pb2.Policy:
    return policy_pb2.Policy(bindings=[
        policy_pb2.Binding(role="roles/cloudfunctions.invoker", members=[
            "allUsers", f"serviceAccount:caller@{PROJECT}.iam.gserviceaccount.com", "group:ops@acme.com"]),
        policy_pb2.Binding(role="roles/cloudfunctions.developer", members=["user:dev@acme.com"])])


def pubsub_function(retry: bool = False) -> f.CloudFunction:
    """An event function on a Pub/Sub topic with nothing else set (the API's defaults)."""
    failure = f.FailurePolicy(retry=f.FailurePolicy.Retry()) if retry else None
    return f.CloudFunction(
        name=name("on-order"), runtime="nodejs20", entry_point="onOrder",
        event_trigger=f.EventTrigger(event_type="google.pubsub.topic.publish",
                                     resource=f"projects/{PROJECT}/topics/orders",
                                     service="pubsub.googleapis.com", failure_policy=failure),
        version_id=1, status=f.CloudFunctionStatus.ACTIVE,
        source_archive_url="gs://acme-sources/on-order.zip")
