"""deploy/crontab.example: its paths are cluster.yaml's, and its command line, run as cron runs it
against a real head started by deploy/start-cluster.sh (token auth, credentials only in the node's
env file), maps a growing source incrementally, every sample exactly once (WORKERS=2, but each run has
one new shard and so starts one worker: jobs.runtime.cluster.plan_workers); a run that
overlaps a live one stops in one line. The head, started with PATHWAY_NODE_IP=127.0.0.1, listens on
loopback only, as seen once those jobs have run on it (its agents and workers up). It is the suite's
``ray job submit --working-dir .`` test of jobs.attribute (the user's own model under ray job submit:
tests/jobs/test_user_models.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from storage.maps.reader import read_errors, read_maps, read_run
from tests.helpers import fashion_mnist, write_folder
from tests.jobs.attribute_support import METHODS, source_ids
from tests.ray_cluster import ROOT, beyond_loopback, kill_tree, listeners, ray_head_node, wait_for, wait_for_dashboard

CRONTAB = ROOT / "deploy" / "crontab.example"
SHIPPED = ROOT / "models" / "weights" / "resnet8-fashion-mnist.pt"


def crontab() -> tuple[dict[str, str], str]:
    """The example's variables and the command of its one schedule line, as cron hands it to the shell
    (cron cuts a command at a bare %, and turns \\% into %)."""
    variables, commands = {}, []
    for line in CRONTAB.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line):
            variables[match[1]] = match[2]
        else:
            commands.append(line.split(None, 5)[5])
    (command,) = commands
    assert "%" not in command.replace("\\%", ""), "a bare % ends a cron command"
    return variables, command.replace("\\%", "%")


def test_the_crontab_uses_the_paths_cluster_yaml_installs() -> None:
    """The project where cluster.yaml rsyncs it, the Python it installs into, the dashboard it starts."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    variables, command = crontab()
    mount = next(target for target, source in config["file_mounts"].items() if source == ".")
    assert variables["PROJECT"] == mount.replace("~", f"/home/{config['auth']['ssh_user']}", 1)
    setup = " ".join(config["setup_commands"])
    assert f"source {Path(variables['PYTHON_BIN']).parent}/bin/activate" in setup
    assert f"pip install -q -e {mount}" in setup
    head_start = " ".join(config["head_start_ray_commands"])
    port = re.search(r"--dashboard-port=(\d+)", head_start)[1]
    assert variables["DASHBOARD"] == f"http://127.0.0.1:{port}" and "RAY_AUTH_MODE=token" in head_start
    assert variables["RAY_AUTH_MODE"] == "token"
    assert command.startswith('cd "$PROJECT" && PATH="$PYTHON_BIN:$PATH" ray job submit')
    assert "%H%M%S" in command  # a same-day resubmission is a new job id


def _submitted(log: Path, before: int) -> str:
    """The submission id that the last cron run wrote to its log."""
    text = log.read_text()[before:]
    match = re.search(r"Job '([^']+)' submitted successfully", text)
    assert match, text[-3000:]
    return match[1]


@pytest.mark.slow
def test_the_crontab_line_runs_incrementally_and_an_overlapping_run_stops_in_one_line(s3_server, tmp_path,
                                                                                     monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STORAGE_OPTIONS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)  # credentials reach the job only through the node
    options = s3_server.storage_options
    env_file = tmp_path / "node.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={options['key']}\nAWS_SECRET_ACCESS_KEY={options['secret']}\n"
                        f"AWS_DEFAULT_REGION=us-east-1\n"
                        f"STORAGE_OPTIONS='{json.dumps({'client_kwargs': options['client_kwargs']})}'\n")
    env_file.chmod(0o600)
    source, output = s3_server.url("cron-src"), s3_server.url("cron-maps")
    images, labels = fashion_mnist("test", 60)
    write_folder(source, options, images[:40], labels[:40])
    log = tmp_path / "attribute-cron.log"
    variables, command = crontab()
    with ray_head_node(num_cpus=2, env_file=str(env_file)) as head:
        dashboard = wait_for_dashboard(head)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PATHWAY_"))}, **variables,
               "PROJECT": str(ROOT), "PYTHON_BIN": str(Path(sys.executable).parent), "DASHBOARD": dashboard,
               "SOURCE": source, "CHECKPOINT": str(SHIPPED), "OUTPUT": output, "DEVICE": "cpu", "WORKERS": "2",
               "LOG": str(log), "RAY_AUTH_TOKEN_PATH": head.env["RAY_AUTH_TOKEN_PATH"]}

        def cron_run() -> tuple[str, str]:
            """Run the schedule line once as cron would; (final status, the job's logs)."""
            before = log.stat().st_size if log.exists() else 0
            deadline = time.monotonic() + 90
            while True:  # the dashboard answers a little before its job agent is up
                done = subprocess.run([env["SHELL"], "-c", command], env=env, cwd=tmp_path, timeout=300)
                assert done.returncode == 0, log.read_text()[-3000:]
                if "No available agent" not in log.read_text()[before:] or time.monotonic() > deadline:
                    break
                before = log.stat().st_size
                time.sleep(1)
            job = _submitted(log, before)

            def finished() -> str | None:
                status = job_api(f"/api/jobs/{job}")["status"]
                return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

            status = wait_for(finished, 300, f"job {job}", interval=0.25)
            return status, job_api(f"/api/jobs/{job}/logs")["logs"]

        bearer = {"Authorization": f"Bearer {Path(head.env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}

        def job_api(path: str) -> dict:
            """The head's job API with the cluster's token: what `ray job status` and `ray job logs` ask,
            without a CLI process (a Python that imports Ray) per poll."""
            request = urllib.request.Request(f"{dashboard}{path}", headers=bearer)
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())

        def counts(logs: str) -> tuple[int, int]:
            match = re.search(r"(\d+) already committed, (\d+) to do", logs)
            assert match, logs[-3000:]
            return int(match[1]), int(match[2])

        status, logs = cron_run()
        assert status == "SUCCEEDED", logs[-3000:]
        assert counts(logs)[0] == 0 and counts(logs)[1] >= 1
        first_todo = counts(logs)[1]
        write_folder(source, options, images[40:], labels[40:], first=40)  # new files appear
        status, logs = cron_run()
        assert status == "SUCCEEDED", logs[-3000:]
        assert counts(logs)[0] == first_todo and counts(logs)[1] >= 1  # only the new samples' shards
        # Every sample of the grown source once (a run with nothing new computes nothing:
        # test_new_source_files_are_processed_incrementally).
        for method in METHODS:
            seen = [*read_maps(output, method, options).sample_id, *read_errors(output, method, options).sample_id]
            assert sorted(seen) == sorted(source_ids(source, options)), method
        assert read_run(output, options)["status"] == "complete"

        # A run that overlaps a live one: another driver holds the output's lease.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom storage.io.lease import Lease\nfrom storage.io.location import "
             f"Location\nwith Lease(Location({output!r}, {options!r})):\n    print('held', flush=True)\n"
             "    time.sleep(600)"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            text=True, start_new_session=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            status, logs = cron_run()
        finally:
            kill_tree(holder.pid)
            holder.wait(timeout=30)
        seen = listeners(head.process.pid)
    assert status == "FAILED", logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    last = logs.strip().splitlines()[-1]
    assert re.match(r"jobs\.attribute: error: s3://test-bucket/cron-maps is being written by another run "
                    rf"\(jobs\.attribute on \S+, pid {holder.pid}, .*wait for it to finish", last), last
    assert options["secret"] not in logs

    processes = " ".join(listener.process for listener in seen)
    assert all(name in processes for name in ("gcs_server", "raylet", "dashboard", "ray::DashboardAgent")), processes
    exposed = beyond_loopback(seen)
    assert not exposed, "the head listens beyond loopback: " + "; ".join(exposed)
