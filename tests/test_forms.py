"""The run forms' schema (cf2run/forms.py), checked with Prefect's own validator as the server runs
it: what a worker or the fleet sends passes, what a user would get wrong is refused before a run
exists, and a form's target changes only the fields the user set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_samples import write_fleet
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from cf2run.fleet.fanout import load, portable
from cf2run.manifest.spec import FunctionSpec, Target, load_manifest
from flows.migrate_fleet import migrate_fleet
from flows.migrate_from_manifest import migrate_from_manifest
from flows.migrate_function import migrate_function

ROOT = Path(__file__).resolve().parents[1]


def refusals(flow: Any, parameters: dict[str, Any]) -> list[str]:
    """What the server says when a run of a deployment of `flow` is created with `parameters`
    (deployments enforce their parameter schema: prefect/server/api/deployments.py)."""
    schema = parameter_schema(flow).model_dump()
    return [error.message for error in validate(parameters, schema)]


def test_what_the_fleet_sends_to_migrate_function_passes_its_schema(tmp_path: Path) -> None:
    spec = load_manifest(write_fleet(tmp_path, ["orders-api"])).functions[0]
    target = Target(kind="gcp", project="my-project", region="europe-west1")
    assert refusals(migrate_function, {"spec": portable(spec),
                                       "target": target.model_dump(mode="json", exclude_none=True)}) == []


@pytest.mark.parametrize(("name", "says"), [
    ("Hello_UI", "'Hello_UI' does not match"),
    ("a" * 46, "is too long"),
    ("orders-", "'orders-' does not match"),
])
def test_a_bad_name_is_refused_by_the_schema_on_both_forms(name: str, says: str) -> None:
    spec = {"name": name, "source": "examples/python-http", "runtime": "python312", "entry_point": "hello"}
    assert any(says in message for message in refusals(migrate_function, {"spec": spec})), name
    assert any(says in message for message in refusals(migrate_from_manifest, {"name": name})), name
    assert refusals(migrate_from_manifest, {"name": "orders-api"}) == []


def test_enums_and_ranges_are_refused_by_the_schema() -> None:
    assert refusals(migrate_fleet, {"manifest": "deployments/fleet.yaml", "max_parallel": 0})
    assert refusals(migrate_fleet, {"manifest": "deployments/fleet.yaml", "fanout": "everywhere"})
    assert refusals(migrate_fleet, {"manifest": "deployments/fleet.yaml", "target": {"kind": "aws"}})
    assert refusals(migrate_fleet, {"manifest": "deployments/fleet.yaml", "max_parallel": 5}) == []


def test_no_optional_field_offers_none_on_the_forms() -> None:
    """No `null` anywhere, but the `target` parameter's default (its Python default, None): the
    form would send it, and the object refuses it, so every deployment starts target at {}."""
    for flow in (migrate_function, migrate_fleet, migrate_from_manifest):
        schema = parameter_schema(flow).model_dump()
        assert schema["properties"]["target"].pop("default") is None
        text = str(schema)
        assert "'null'" not in text and "'default': None" not in text, flow.name
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert all(deployment["parameters"]["target"] == {} for deployment in deployments), deployments


def test_a_forms_target_changes_only_the_fields_set(tmp_path: Path) -> None:
    manifest = write_fleet(tmp_path, ["orders-api"])
    gcp = load_manifest(manifest).target.model_copy(update={"kind": "gcp", "project": "my-project"})
    fleet = load_manifest(manifest).model_copy(update={"target": gcp})
    assert load(fleet, Target.model_validate({})).target == gcp, "an empty form keeps the manifest's"
    changed = load(fleet, Target.model_validate({"region": "europe-west1"})).target
    assert (changed.kind, changed.project, changed.region) == ("gcp", "my-project", "europe-west1")


def test_the_name_limit_is_said_the_same_in_the_description_and_the_errors() -> None:
    description = FunctionSpec.model_fields["name"].description or ""
    assert "at most 45 characters" in description
    with pytest.raises(ValueError, match="use at most 45 characters"):
        FunctionSpec(name="a" * 46, source=ROOT / "examples", runtime="python312", entry_point="hello")
    with pytest.raises(ValueError, match="at most 45 characters"):
        FunctionSpec(name="Hello_UI", source=ROOT / "examples", runtime="python312", entry_point="hello")
