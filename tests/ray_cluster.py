"""Processes and Ray clusters for the job tests: process trees, waiting, and `ray start` nodes.

Everything here is real: nodes are started with the deploy script that operators use
(``deploy/start-cluster.sh``, a real ``ray start --block``) with token auth, on loopback unless
worker nodes join them, and processes are found through /proc and killed by pid.
Only processes that descend from a pid we started (or from this test process) are touched,
so other Ray clusters on a shared machine are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


# -- processes -------------------------------------------------------------------------------
def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` (children, grandchildren...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents[int(entry)] = ppid
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found.extend(sorted(children))
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(root: int, needle: str = "ShardAttributor") -> list[int]:
    """Ray worker processes below ``root`` whose title (Ray rewrites argv) names ``needle``."""
    return [pid for pid in descendants(root) if needle in cmdline(pid)]


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and everything below it (a node that vanishes)."""
    pids = [root, *descendants(root)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Listener:
    """A TCP socket that a process listens on."""

    pid: int
    process: str  # its command line, the program's folder left off
    address: str
    port: int


def _process(pid: int) -> str:
    line = cmdline(pid).strip()
    program, _, rest = line.partition(" ")
    return f"{os.path.basename(program)} {rest}"[:160] if program.startswith("/") else line[:160]


def listeners(root: int) -> set[Listener]:
    """Every TCP socket listening in ``root``'s process tree (root included)."""
    import ray  # noqa: F401 - puts Ray's bundled psutil on sys.path
    import psutil

    try:
        tree = {root, *(child.pid for child in psutil.Process(root).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
    return {Listener(conn.pid, _process(conn.pid), conn.laddr.ip, conn.laddr.port)
            for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.pid in tree}


def beyond_loopback(seen: set[Listener]) -> list[str]:
    """The listeners in ``seen`` that other machines could reach (not on a loopback address), one
    line each: what the loopback-only checks of a job's Ray and of a deploy head report."""
    from jobs.runtime.cluster import is_loopback

    return sorted(f"{l.process} (pid {l.pid}) on {l.address}:{l.port}" for l in seen if not is_loopback(l.address))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


#: How many Ray temp folders this test process made: one per Ray that a test, a job subprocess or a
#: cluster node of the tests started (reported at the end of the session).
RAY_TEMPS = 0


def short_tmp(prefix: str) -> str:
    """A fresh short directory under /tmp for a Ray: its unix sockets must fit in 107 characters."""
    global RAY_TEMPS
    RAY_TEMPS += 1
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def job_env(ray_tmp: str, **extra: str) -> dict[str, str]:
    """Environment for a job subprocess: its own Ray temp dir (never joins another cluster on the machine)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.update(extra)
    return env


#: The script that starts a node of a cluster you run yourself; the tests start theirs with it too.
START_CLUSTER = ROOT / "deploy" / "start-cluster.sh"


def node_ports() -> dict[str, str]:
    """Free ports for every port of a node that has a fixed default (start-cluster.sh's settings), so
    that two nodes (or two test runs) on one machine never share one: two nodes sharing the dashboard
    agent's port leave one of them without an agent ("No available agent to submit job")."""
    names = ("OBJECT_MANAGER_PORT", "NODE_MANAGER_PORT", "AGENT_GRPC_PORT", "AGENT_HTTP_PORT", "METRICS_PORT",
             "RUNTIME_ENV_PORT", "GCS_PORT", "DASHBOARD_PORT", "CLIENT_PORT")
    return {f"PATHWAY_{name}": str(free_port()) for name in names}


@dataclass
class RayNode:
    """A node started with ``deploy/start-cluster.sh --foreground`` (which execs ``ray start ... --block``):
    every Ray daemon of the node (and its workers) descends from ``process``, so it is found and killed
    through /proc without touching other Rays."""

    process: subprocess.Popen
    temp: str
    gcs_address: str  # host:port of the cluster's GCS (the head's)
    env: dict[str, str]
    dashboard: str | None = None  # the dashboard's URL (a head with a dashboard)

    def raylet(self) -> int | None:
        """The node's raylet pid (its node manager), if it runs."""
        return next((pid for pid in descendants(self.process.pid)
                     if os.path.basename(cmdline(pid).split(" ", 1)[0]) == "raylet"), None)

    def worker_pids(self, needle: str = "ShardAttributor") -> list[int]:
        return worker_pids(self.process.pid, needle)

    def log(self) -> str:
        return Path(self.temp, "ray-start.log").read_text(errors="replace")


@contextlib.contextmanager
def _ray_start(args: list[str], temp: str, env: dict[str, str], gcs_address: str,
               dashboard: str | None = None) -> Iterator[RayNode]:
    """``deploy/start-cluster.sh <args> --foreground`` in a new session; waits for "Ray runtime started",
    kills its tree after."""
    with open(os.path.join(temp, "ray-start.log"), "wb") as log:
        process = subprocess.Popen([str(START_CLUSTER), *args, "--foreground"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(process, temp, gcs_address, env, dashboard)

        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}: {node.log()[-2000:]}")
            return "Ray runtime started" in node.log()

        try:
            wait_for(started, 120, "ray start", interval=0.25)
            yield node
        finally:
            kill_tree(process.pid)
            process.wait(timeout=30)


def node_env(temp: str, base: dict[str, str], num_cpus: int, **extra: str) -> dict[str, str]:
    """start-cluster.sh's settings for a node in ``temp``: this venv's Python, free ports, no env file
    of the user's home."""
    env = {**base, **node_ports(), "RAY_TMPDIR": temp, "PATHWAY_NODE_DIR": temp,
           "PATHWAY_NUM_CPUS": str(num_cpus), "PATHWAY_NUM_GPUS": "0",
           "PATHWAY_PYTHON_BIN": str(Path(sys.executable).parent), "PATHWAY_ENV_FILE": ""}
    env.update(extra)
    return env


@contextlib.contextmanager
def ray_head_node(num_cpus: int = 2, dashboard: bool = True, joinable: bool = False, env_file: str | None = None,
                  **env_extra: str) -> Iterator[RayNode]:
    """A real head (``start-cluster.sh head``) in a fresh temp dir, with token auth (the token file is
    ``<temp>/auth_token``, in the env of clients too). It listens on loopback only, unless ``joinable``:
    a head that worker nodes join listens on the host's address, as Ray requires, where its token
    keeps others out. ``env_file`` is the node's PATHWAY_ENV_FILE; ``env_extra`` sets its environment
    (``RAY_<system config>=...`` tunes the cluster)."""
    temp = short_tmp("rh")
    env = node_env(temp, job_env(temp, RAY_AUTH_MODE="token"), num_cpus, PATHWAY_DASHBOARD=str(int(dashboard)),
                   PATHWAY_DASHBOARD_HOST="127.0.0.1", RAY_AUTH_TOKEN_PATH=os.path.join(temp, "auth_token"),
                   **({} if joinable else {"PATHWAY_NODE_IP": "127.0.0.1"}), **env_extra)
    if env_file is not None:
        env["PATHWAY_ENV_FILE"] = env_file
    url = f"http://127.0.0.1:{env['PATHWAY_DASHBOARD_PORT']}" if dashboard else None
    try:
        with _ray_start(["head"], temp, env, f"127.0.0.1:{env['PATHWAY_GCS_PORT']}", url) as node:
            node.env = {k: v for k, v in env.items() if not k.startswith("PATHWAY_")}  # what clients need
            yield node
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def ray_worker_node(head: RayNode, num_cpus: int = 2) -> Iterator[RayNode]:
    """A second node that joins ``head``'s cluster (a ``joinable`` head; ``start-cluster.sh worker``)
    with the head's token and its own temp dir and ports; killed (its whole process tree) when the
    block ends."""
    temp = short_tmp("rw")
    env = node_env(temp, head.env, num_cpus)
    try:
        with _ray_start(["worker", head.gcs_address], temp, env, head.gcs_address) as node:
            yield node
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_dashboard(node: RayNode) -> str:
    """Wait until the head's job API answers; its URL."""
    import urllib.error
    import urllib.request

    def ready() -> bool:
        if node.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {node.process.returncode}: {node.log()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{node.dashboard}/api/version", timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError as err:  # it answers: 401 without the token of a cluster with token auth
            return err.code == 401
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for(ready, 120, "the Ray head's dashboard", interval=0.5)
    return node.dashboard


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """A real head on loopback: ``start-cluster.sh head --foreground`` with token auth and a fresh temp dir.

    Yields (dashboard URL, env for clients). ``--block`` keeps every Ray daemon a child of the
    process we started, so teardown kills exactly that tree (``ray stop`` would stop every Ray
    of this user on the machine, other people's included).
    """
    with ray_head_node(num_cpus) as node:
        yield wait_for_dashboard(node), node.env


def submit_job(address: str, env: dict[str, str], *args: str, patience: float = 90) -> subprocess.CompletedProcess:
    """``ray job submit --address <address> <args>`` with this venv's ``ray``, submitted again while the
    head's job agent is not up: its dashboard answers a little before the agent does ("No available
    agent to submit job"). The last try's result once it is up or ``patience`` seconds have passed."""
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, *args]
    deadline = time.monotonic() + patience
    while True:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in result.stdout + result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(1)
