"""Max instances: gen1's default kept, and Cloud Run's quota refusal explained (issue 14 §4).

gen1 gives a function without a limit 3000 instances (cloud.google.com/functions/1stgendocs/
configuring/max-instances); Cloud Run would give it 100. cf2run sends 3000, and where the
project's regional quota allows fewer for the function's cpu and memory, Cloud Run refuses
the request (the local Cloud Run as Google: cloudrun_rules.check_instance_quota) and the
deploy fails naming `max_instances`, before any revision exists.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions

from cf2run.errors import DeployFailed
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import VerifiedImage
from tasks.deploy import deploy, service_path

#: Never pulled: Cloud Run refuses the request before it looks at the image.
IMAGE = VerifiedImage(image=f"{Target().image_repository('never-pulled')}@sha256:{'0' * 64}",
                      digest=f"sha256:{'0' * 64}", platform="linux/amd64", web_process="web")


def spec_of(tmp_path: Path, **fields: object) -> FunctionSpec:
    (tmp_path / "main.py").write_text("def hello(request):\n    return 'hi'\n")
    return FunctionSpec.model_validate({"name": f"scale-{uuid.uuid4().hex[:8]}", "source": tmp_path,
                                        "runtime": "python312", "entry_point": "hello", **fields})


def test_gen1_default_above_the_regional_quota_fails_naming_max_instances(
        cloud: Cloud, tmp_path: Path) -> None:
    """2Gi came with 1 vCPU on gen1; 3000 x 1 vCPU exceed the region's 1000 vCPU (the local
    cloud's run_cpu_quota, Google's example baseline)."""
    spec = spec_of(tmp_path, memory="2Gi")
    target = Target()
    with pytest.raises(DeployFailed) as raised:
        deploy(cloud, spec, target, IMAGE)
    assert "Invalid value specified for cpu. For the specified value, maxScale may not exceed 1000." \
        in raised.value.message
    hint = raised.value.hint or ""
    assert "max_instances" in hint and "gen1's 3000" in hint and "cloud.google.com/run/quotas" in hint
    with pytest.raises(exceptions.NotFound):
        cloud.services.get_service(name=service_path(target, spec.name))
