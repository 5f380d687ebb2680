"""deploy/raycronjob.yaml against KubeRay's own RayCronJob and RayJob CRD schemas (vendored under
tests/data/kuberay/), with a real JSON Schema validator. A CRD schema lets unknown fields through
(the API server prunes them, or refuses them under kubectl's strict field validation), so the test
refuses them too: a misspelled field would otherwise be dropped without a word."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.ray_cluster import ROOT

SCHEMAS = ROOT / "tests" / "data" / "kuberay"


def strict(schema: Any) -> Any:
    """``schema`` with unknown properties refused wherever the CRD lists properties and does not
    preserve unknown fields (x-kubernetes-preserve-unknown-fields), as strict field validation does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not")
           else value for key, value in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def validator(name: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def manifest() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "raycronjob.yaml").read_text())


def rayjob(cron: dict) -> dict:
    """The RayJob that the RayCronJob creates: its jobTemplate is the RayJob's spec."""
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "nightly"},
            "spec": cron["spec"]["jobTemplate"]}


def errors(name: str, instance: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(instance)]


def test_the_manifest_is_a_valid_raycronjob_and_its_template_a_valid_rayjob() -> None:
    cron = manifest()
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob"
    assert errors("raycronjob", cron) == []
    assert errors("rayjob", rayjob(cron)) == []


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "jobTemplate", "shutdownAfterJobFinish"), True, "Additional properties"),  # misspelled
    (("spec", "concurrencyPolicy"), "Forbid", "Additional properties"),  # RayCronJob has none
    (("spec", "jobTemplate", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"), "4", "is not of type 'integer'"),
    (("spec", "jobTemplate", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
      "resource"), {}, "Additional properties"),
    (("spec", "jobTemplate", "rayClusterSpec", "authOptions", "mode"), "tokens", "is not one of"),
])
def test_the_validator_catches_what_kubernetes_would_refuse(path: tuple, value: Any, expected: str) -> None:
    """The check is real: a misspelled field, a field of another resource, a wrong type or value."""
    cron = copy.deepcopy(manifest())
    node = cron
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors("raycronjob", cron)
    if path[1] == "jobTemplate":
        found += errors("rayjob", rayjob(cron))
    assert found and all(expected in e for e in found), found


def test_the_submitter_and_the_operator_can_reach_the_head() -> None:
    """In K8sJobMode a separate pod submits through the head Service, and the operator polls the job's
    status there in every mode: the dashboard must not be bound to the head's loopback."""
    job = manifest()["spec"]["jobTemplate"]
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    head = job["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head.get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    assert job["rayClusterSpec"]["authOptions"]["mode"] == "token"
