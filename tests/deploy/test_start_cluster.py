"""deploy/start-cluster.sh as an operator runs it: a head and a worker on one host (distinct port sets),
token auth, the env file and the venv reaching a job's driver, idempotent starts, a stop that ends
exactly its node. Refusals are one line with exit status 2, before Ray starts. (That a head started with
PATHWAY_NODE_IP=127.0.0.1 listens on loopback only is checked on the head that tests/deploy/test_crontab.py
runs its jobs on.)"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_cluster import ROOT, START_CLUSTER, descendants, short_tmp, submit_job, wait_for
from tests.servers import free_port

BIN = str(Path(sys.executable).parent)


def port_base() -> int:
    """A base with six free ports in a row (a node's fixed ports)."""
    rng = random.Random(os.getpid())
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        try:
            socks = []
            for port in range(base, base + 6):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no six free ports in a row")


def script(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(START_CLUSTER), *args], env=env, capture_output=True, text=True, timeout=timeout)


def base_env(node_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PATHWAY_"))}
    env.update(PATHWAY_NODE_DIR=node_dir, PATHWAY_PYTHON_BIN=BIN, PATHWAY_ENV_FILE="", PATHWAY_NUM_GPUS="0",
               RAY_TMPDIR=node_dir, PATH="/usr/bin:/bin")  # no venv on the operator's PATH
    env.update(extra)
    return env


@pytest.mark.parametrize(("args", "extra", "message"), [
    (("worker", "127.0.0.1:6379"), {}, "no Ray auth token at "),
    (("worker",), {}, "worker needs the head's GCS address"),
    (("worker", "127.0.0.1:6379"), {"PATHWAY_NODE_IP": "127.0.0.1"}, "a worker cannot listen on loopback only"),
    (("head",), {"PATHWAY_ENV_FILE": "/nonexistent/node.env"}, "PATHWAY_ENV_FILE=/nonexistent/node.env does not exist"),
    (("head",), {"PATHWAY_PYTHON_BIN": "/nonexistent/bin"}, "no Python with Ray found"),
    (("restart",), {}, "usage: "),
])
def test_refusals_are_one_line_with_status_2(tmp_path, args, extra, message) -> None:
    env = base_env(str(tmp_path / "node"), RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing-token"), **extra)
    done = script(*args, env=env, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("start-cluster.sh: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "node" / "ray.pid").exists()


@pytest.mark.slow
def test_a_token_cluster_of_two_nodes_on_one_host(tmp_path) -> None:
    head_dir, worker_dir = short_tmp("sh"), short_tmp("sw")
    token = str(tmp_path / "auth_token")
    env_file = tmp_path / "node.env"
    env_file.write_text("PATHWAY_TEST_MARK='from the env file'\n")
    env_file.chmod(0o600)
    gcs, dash = free_port(), free_port()
    head = base_env(head_dir, RAY_AUTH_TOKEN_PATH=token, PATHWAY_ENV_FILE=str(env_file), PATHWAY_NUM_CPUS="0",
                    PATHWAY_PORT_BASE=str(port_base()), PATHWAY_GCS_PORT=str(gcs), PATHWAY_DASHBOARD_PORT=str(dash),
                    PATHWAY_CLIENT_PORT=str(free_port()))
    worker = base_env(worker_dir, RAY_AUTH_TOKEN_PATH=token, PATHWAY_ENV_FILE=str(env_file), PATHWAY_NUM_CPUS="1",
                      PATHWAY_PORT_BASE=str(port_base() + 10))
    client = {**base_env(head_dir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)}
    started = []
    try:
        done = script("head", env=head)
        assert done.returncode == 0 and "the head node runs" in done.stdout, done.stdout + done.stderr
        started.append(int(Path(head_dir, "ray.pid").read_text()))
        assert oct(os.stat(token).st_mode & 0o777) == "0o600"  # the head made the cluster's token
        again = script("head", env=head)
        assert again.returncode == 0 and "already runs" in again.stdout  # idempotent
        assert int(Path(head_dir, "ray.pid").read_text()) == started[0]
        done = script("worker", f"127.0.0.1:{gcs}", env=worker)
        assert done.returncode == 0, done.stdout + done.stderr
        started.append(int(Path(worker_dir, "ray.pid").read_text()))
        assert script("status", "worker", env=worker).returncode == 0

        count = ("import ray; ray.init(address='auto', logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()), ray.cluster_resources().get('CPU'))")
        nodes = subprocess.run([sys.executable, "-c", count], env={**client, "RAY_ADDRESS": f"127.0.0.1:{gcs}"},
                               capture_output=True, text=True, timeout=120)
        assert nodes.stdout.split() == ["2", "1.0"], nodes.stdout + nodes.stderr[-2000:]

        # A job's driver: the venv's python (the raylet's PATH), the env file's variables, this checkout.
        entry = "import os, sys, jobs; print('driver', sys.executable, os.environ['PATHWAY_TEST_MARK'])"
        submit = ["--working-dir", str(ROOT), "--", "python", "-c", entry]
        done = submit_job(f"http://127.0.0.1:{dash}", client, *submit, patience=120)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert f"driver {BIN}/python from the env file" in done.stdout, done.stdout[-3000:]
        no_token = submit_job(f"http://127.0.0.1:{dash}", {**client, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")},
                              *submit, patience=0)
        assert no_token.returncode != 0 and "AuthenticationError" in no_token.stdout + no_token.stderr
    finally:
        trees = {pid: descendants(pid) for pid in started}
        stops = [script("stop", role, env=env) for role, env in (("worker", worker), ("head", head))]
        for folder in (head_dir, worker_dir):
            shutil.rmtree(folder, ignore_errors=True)
    assert all(stop.returncode == 0 and stop.stdout.startswith("stopped the ") for stop in stops), stops
    for pid, tree in trees.items():  # the stop ended the node's every process
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in [pid, *tree]), 30, f"node {pid} to end")
    assert script("status", "head", env=head).returncode == 3
