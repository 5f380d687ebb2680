"""cluster.yaml and the deploy/ manifests parse, and hold the settings the docs promise."""

from __future__ import annotations

import yaml

from tests.ray_cluster import ROOT


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_cluster_yaml_cpu_head_gpu_spot_workers_private_dashboard() -> None:
    config = load("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0  # schedules no work
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["resources"]["GPU"] >= 1 and worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["max_workers"] <= config["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith(("g5.", "g6.", "g6e."))
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    # Only SSH, only from one address.
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"].endswith("/32") for r in rules for ip in r["IpRanges"])
    # The project is installed over the AMI's CUDA torch; the CPU-torch constraints are never used.
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "-e" in setup and "constraints" not in setup
    assert config["file_mounts"]["~/pathway-attribution"] == "."


def test_raycronjob_runs_the_attribution_job_on_gpus() -> None:
    manifest = load("deploy/raycronjob.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCronJob"
    spec = manifest["spec"]
    assert len(spec["schedule"].split()) == 5
    job = spec["jobTemplate"]
    assert job["entrypoint"].startswith("python -m jobs.attribute") and "--output s3://" in job["entrypoint"]
    assert "secret" not in job["entrypoint"].lower() and "key" not in job["entrypoint"].lower()
    cluster = job["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    gpu = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpu) == 1 and group["minReplicas"] == 0
