"""Vendor the parts of KubeRay's CRD schemas that deploy/raycronjob.yaml uses, for its validation test.

    python scripts/kuberay_schemas.py <kuberay git dir> <commit> <version>

reads ray-operator/config/crd/bases/ray.io_{raycronjobs,rayjobs}.yaml at <commit> (``git show``, so a
bare mirror works) and writes tests/data/kuberay/{raycronjob,rayjob}.schema.json: each CRD's
``openAPIV3Schema`` cut down to the paths the manifest uses. The full schemas embed the whole Pod
spec several times (0.8 and 1.4 MB); the cut keeps, at every object the manifest touches, every
property NAME of the CRD (an unused one as ``{}``), so a misspelled or unknown field is still
caught, and the full schema of every value the manifest sets. Rerun it when the manifest or the
KubeRay version changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "kuberay"


def prune(schema: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """``schema`` restricted to what ``values`` (the manifest's values at this path) reach."""
    out = dict(schema)
    dicts = [v for v in values if isinstance(v, dict)]
    lists = [v for v in values if isinstance(v, list)]
    if "properties" in schema and dicts:
        out["properties"] = {name: prune(sub, [d[name] for d in dicts if name in d]) if any(name in d for d in dicts)
                             else {} for name, sub in schema["properties"].items()}
    elif "properties" in schema:
        out["properties"] = {name: {} for name in schema["properties"]}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = prune(schema["additionalProperties"], [x for d in dicts for x in d.values()])
    if isinstance(schema.get("items"), dict):
        out["items"] = prune(schema["items"], [x for v in lists for x in v])
    return out


def crd_schema(git_dir: str, commit: str, name: str) -> dict[str, Any]:
    text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:ray-operator/config/crd/bases/{name}"],
                          check=True, capture_output=True, text=True).stdout
    (version,) = [v for v in yaml.safe_load(text)["spec"]["versions"] if v["name"] == "v1"]  # apiVersion ray.io/v1
    return version["schema"]["openAPIV3Schema"]


def main(git_dir: str, commit: str, version: str) -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "raycronjob.yaml").read_text())
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"},
              "spec": manifest["spec"]["jobTemplate"]}
    OUT.mkdir(parents=True, exist_ok=True)
    for crd, instance, target in (("ray.io_raycronjobs.yaml", manifest, "raycronjob.schema.json"),
                                  ("ray.io_rayjobs.yaml", rayjob, "rayjob.schema.json")):
        schema = prune(crd_schema(git_dir, commit, crd), [instance])
        schema = {"$comment": f"openAPIV3Schema of KubeRay {version} (commit {commit}) "
                              f"ray-operator/config/crd/bases/{crd}, cut to deploy/raycronjob.yaml's paths by "
                              "scripts/kuberay_schemas.py. KubeRay: Copyright the KubeRay authors, Apache License "
                              "2.0.", **schema}
        (OUT / target).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT / target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
