"""The Ray side every distributed job shares: connecting to (or starting) Ray, and sizing workers.

A job runs unchanged locally (it starts a local Ray) and under ``ray job submit`` (it joins the
cluster it runs in, via ``$RAY_ADDRESS`` or ``--ray-address``).

The local Ray listens on loopback only: Ray's daemons and workers run whatever code a client sends
them, so on a shared or reachable machine a Ray bound to every interface is a remote shell.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jobs.runtime.cli import JobError


#: Ray's single-machine switch (its mode on macOS and Windows): off, Ray takes the loopback address
#: as the node's address, and its GCS, raylet, object manager, agents, metrics servers and workers
#: then bind that address only. Read by ``ray._private.services.get_node_ip_address``.
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None) -> None:
    """Join the Ray at ``address`` (or ``$RAY_ADDRESS``), reuse one already initialized in this
    process (tests, notebooks), or start a local one on loopback; Ray Data's own progress bars stay off.

    Without an address the job starts its own Ray rather than joining one named in Ray's temp
    folder (``/tmp/ray/ray_current_cluster``, which on a shared machine another user may own):
    joining a cluster is the operator's choice, made with ``--ray-address auto`` or an address."""
    global _owned
    import ray

    from jobs.runtime import noise, stopping

    noise.quiet_ray_logs()
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        pass
    else:
        if address:
            check_answers(address)
            with single_machine_mode(joins_loopback(address)):  # else Ray dials the host's address and hangs
                try:
                    ray.init(address=address, log_to_driver=True)
                except ConnectionError as err:  # Ray's GCS answered, and refused or dropped the driver
                    raise JobError(f"could not join the Ray at {address} ({err}). A cluster with token authentication "
                                   "(cluster.yaml's, start-cluster.sh's, and a Ray that ray.init started) needs "
                                   "RAY_AUTH_MODE=token here and its token: $RAY_AUTH_TOKEN, or the file "
                                   "~/.ray/auth_token (docs/cluster.md)") from None
        else:
            start_local_ray(include_dashboard=False, log_to_driver=True)
        _owned = True
        stopping.reinstall()  # ray.init replaced the job's SIGTERM handler with sys.exit(15)
        noise.filter_stderr()  # after the start: Ray's daemons must not inherit the filter's pipe
    ray.data.DataContext.get_current().enable_progress_bars = False


#: Whether this process's Ray was started (or joined) by :func:`start_ray`, so the job shuts it down.
_owned = False


#: Settings of the driver's environment that its workers read too: set where a job is launched, they
#: hold for its every task and actor, on every node (a node's own value is only the default).
WORKER_SETTINGS = ("PATHWAY_STORAGE_RETRY_SECONDS",)


def worker_options() -> dict[str, Any]:
    """Ray options that give a job's tasks and actors the driver's :data:`WORKER_SETTINGS` (a
    ``runtime_env`` whose ``env_vars`` Ray merges into the job's own); empty when none is set, so a
    job that sets nothing starts its workers exactly as before."""
    env = {name: os.environ[name] for name in WORKER_SETTINGS if name in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}


def stop_ray() -> None:
    """Shut down the Ray that :func:`start_ray` started or joined, if it did (a Ray the caller
    initialized, in tests or a notebook, stays up): a stopped job leaves no daemon or actor behind,
    and on a cluster its actors end with the driver's connection."""
    global _owned
    from jobs.runtime import noise

    if _owned:
        import ray

        _owned = False
        ray.shutdown()
    noise.unfilter_stderr()


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a fresh single-machine Ray (``ray.init(address="local", **init_kwargs)``) whose every
    listening socket is on loopback, and fail closed if Ray came up on another address.

    Ray has no public option for this: ``_node_ip_address="127.0.0.1"`` and
    ``ray start --node-ip-address=127.0.0.1`` are both rewritten to the host's address on Linux.
    Its single-machine mode is switched on for the start only (the daemons inherit it; a later
    ``ray.init(address=...)`` in this process still joins clusters)."""
    import ray

    with single_machine_mode():
        ray.init(address="local", **init_kwargs)
    node = ray.util.get_node_ip_address()
    if not is_loopback(node):
        ray.shutdown()
        raise JobError(f"the local Ray came up on {node}, not on loopback, so other machines could reach it "
                       f"({_RAY_CLUSTER_ENV}=0 had no effect with Ray {ray.__version__}); pass --ray-address of a "
                       "cluster whose ports only its own nodes can reach (docs/cluster.md)")


@contextmanager
def single_machine_mode(on: bool = True) -> Iterator[None]:
    """Ray's single-machine switch (:data:`_RAY_CLUSTER_ENV`), on for the block only (``on=False``: a
    no-op). Ray reads it when it starts or joins a Ray: with it, the node's address is loopback."""
    if not on:
        yield
        return
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env


def joins_loopback(address: str) -> bool:
    """Whether ``address`` (``host:port``, or ``auto``: the last ``ray start`` of this machine) is a Ray
    on loopback: a job's own local Ray, or a ``start-cluster.sh`` head on loopback. Ray rewrites a
    loopback address to the host's when a driver joins (``resolve_ip_for_localhost``), and a Ray that
    listens on loopback only never answers there: the driver must join in single-machine mode too.
    A Ray Client address (``ray://``) connects as given."""
    from ray._private.services import parse_address

    named = _named_address(address)
    if named is None:
        return False
    parsed = parse_address(named)  # Ray's own split of host:port, [v6]:port included
    return is_loopback(parsed[0] if parsed else named)


def _named_address(address: str) -> str | None:
    """The ``host:port`` that ``address`` names: itself, or for ``auto`` the last ``ray start`` of this
    machine; None for a Ray Client address (``ray://``) and for an ``auto`` that finds no cluster, which
    ``ray.init`` reports in its own words."""
    from ray._private.services import get_ray_address_from_environment

    if address.startswith("ray://"):
        return None
    if address != "auto":
        return address
    try:
        return get_ray_address_from_environment("auto", None) or None
    except Exception:  # noqa: BLE001 - no cluster found: ray.init says so
        return None


#: Seconds a Ray address has to accept a TCP connection, and to answer it, before the job refuses it.
CONNECT_SECONDS = 10.0

#: What an HTTP/2 client sends first (the connection preface, then an empty SETTINGS frame). A gRPC
#: server, which Ray's GCS is, answers with a SETTINGS frame; an HTTP/1 server does not.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def check_answers(address: str) -> None:
    """Refuse, in one line, a Ray address (``host:port`` or ``auto``) where nothing accepts a connection,
    or where what answers is not a gRPC server (the dashboard's port 8265 given for the GCS's 6379).
    Ray's own join retries either for minutes, printing only its client's warnings. A Ray Client
    address (``ray://``) and an ``auto`` that names no cluster are left to ``ray.init``; with
    ``$RAY_USE_TLS`` the GCS expects TLS first, so only the connection is checked."""
    import socket

    from ray._private.services import parse_address

    named = _named_address(address)
    if named is None:
        return
    parsed = parse_address(named)
    if not parsed:
        raise JobError(f"the Ray address {address!r} (--ray-address or $RAY_ADDRESS) is not host:port (a Ray head's "
                       "GCS address, e.g. 10.0.0.5:6379), 'auto' or ray://host:port; an http:// address is the "
                       "dashboard's, for ray job submit")
    shown = address if named == address else f"{address!r} ({named})"
    try:
        with socket.create_connection((parsed[0].strip("[]"), int(parsed[1])), timeout=CONNECT_SECONDS) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            sock.sendall(_H2_HELLO)
            with sock.makefile("rb") as reader:  # read(9) waits for 9 bytes, fewer only if the peer closes
                first = reader.read(9)  # a frame header: length (3 bytes), type, flags, stream id
    except (OSError, ValueError) as err:
        raise JobError(f"no Ray answers at {shown}: {err}. Start the cluster first (ray start --head, or "
                       "deploy/start-cluster.sh), or fix --ray-address / $RAY_ADDRESS") from None
    if len(first) < 9 or first[3] != _H2_SETTINGS:
        raise JobError(f"what answers at {shown} is not a Ray GCS (it does not speak gRPC; it sent {first[:16]!r}). "
                       "--ray-address / $RAY_ADDRESS takes the head's GCS address (port 6379 unless the head "
                       "chose another); the dashboard's port (8265) is for ray job submit")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped ::ffff:127.x)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


@dataclass(frozen=True)
class WorkerSizing:
    """How many workers run at once and what each one asks Ray for."""

    workers: int
    gpus: int  # per worker: 1 on GPU clusters, else 0
    cpus: int  # per worker (Ray's num_cpus)
    threads: int  # torch CPU threads per worker; 0 leaves torch's default (GPU workers)
    device: str  # what the worker computes on: "cuda", "cpu", or the --device given

    @property
    def each(self) -> str:
        """What one worker gets: ``1 GPU`` or ``2 CPU threads``."""
        return "1 GPU" if self.gpus else f"{self.threads} CPU thread{'s' if self.threads != 1 else ''}"

    @property
    def describe(self) -> str:
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} ({self.each} each)"


def size_workers(device: str, workers: int | None, default_cpu_workers: int | str = 1,
                 units: int | None = None) -> WorkerSizing:
    """Size a job's workers from the cluster's resources (Ray must be started): see :func:`plan_workers`."""
    import ray

    return plan_workers(ray.cluster_resources(), device, workers, default_cpu_workers, units)


def plan_workers(resources: dict[str, float], device: str, workers: int | None, default_cpu_workers: int | str = 1,
                 units: int | None = None) -> WorkerSizing:
    """Size a job's workers from a cluster's ``resources``.

    ``--device auto``/``cuda``: one GPU per worker where the cluster has GPUs, as many workers as
    GPUs unless ``workers`` says otherwise. ``cuda`` asks for a GPU per worker even when none is
    up yet, so an autoscaling cluster (min 0 GPU nodes) starts them. On CPUs, ``workers``
    (default ``default_cpu_workers``, or ``"cpus"`` for one per CPU) split the CPUs as torch
    threads. Never more workers than ``units`` of work that can run at once, where given: a worker
    with nothing to do would still start, load the model and hold its GPU or CPUs (a scheduled run
    that finds one new shard starts one worker, which gets every CPU thread).
    """
    gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
    gpus = max(gpus, 1) if device == "cuda" else gpus
    cpus = max(1, int(resources.get("CPU", 1)))
    count = workers or (gpus if gpus else cpus if default_cpu_workers == "cpus" else int(default_cpu_workers))
    if units is not None:
        count = min(count, max(1, units))
    if gpus:
        return WorkerSizing(count, 1, 1, 0, "cuda")
    threads = max(1, cpus // count)
    return WorkerSizing(count, 0, threads, threads, "cpu" if device == "auto" else device)


def check_workers_import(arch: str, trust_code: Sequence[str] = ()) -> None:
    """When ``arch`` is an import path (the user's model code), check that a Ray worker can import
    its module before any actor starts, so that a missing module is one clear line, not an actor
    traceback per retry. Only a module the operator trusts (``trust_code``) is ever imported: the
    driver has refused any other already, and this checks again (models.trust)."""
    if ":" not in arch or arch.startswith("timm:"):
        return
    import ray

    from models.trust import check_import_path, trusted_modules

    module, _ = check_import_path(arch, trusted_modules(trust_code))
    error = ray.get(ray.remote(num_cpus=0)(_try_import).remote(module), timeout=300)
    if error:
        raise JobError(f"the Ray workers cannot import {module!r}, which the checkpoint's arch {arch!r} names "
                       f"({error}); locally, put it on PYTHONPATH before the job starts Ray; with ray job submit, "
                       "pass --working-dir . (or runtime_env py_modules)")


def check_workers_reach(urls: Sequence[str], storage_options: dict[str, Any] | None) -> None:
    """Check from a Ray worker that the remote URLs answer with the job's storage options, before any
    actor starts: credentials that only the driver's environment holds (AWS_* variables, a profile on
    the head node) do not travel to workers, and would otherwise fail every shard."""
    remote = [url for url in urls if "://" in url and not url.startswith("file://")]
    if not remote:
        return
    import ray

    error = ray.get(ray.remote(num_cpus=0)(_try_reach).remote(remote, storage_options), timeout=300)
    if error:
        raise JobError(f"a Ray worker cannot use the job's storage, though the driver can ({error}). Credentials in the driver's environment "
                       "do not travel to workers: pass them as --storage-options / $STORAGE_OPTIONS (sent to the "
                       "workers with the job), or give every node the same credentials (instance role, or "
                       "ray job submit --runtime-env-json '{\"env_vars\": ...}')")


def _try_reach(urls: Sequence[str], storage_options: dict[str, Any] | None) -> str | None:
    """Runs on a Ray worker: None if every URL answers (one existence check each), else which and why."""
    from storage.io.location import Location

    for url in urls:
        try:
            Location(url, storage_options).exists("_lease.json")
        except Exception as err:  # noqa: BLE001 - reported to the driver as one line
            return " ".join(str(err).split())[:500]
    return None


def _try_import(module: str) -> str | None:
    """Runs on a Ray worker: None if ``module`` imports there, else why not."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - reported to the driver as one line
        return f"{type(err).__name__}: {err}"
    return None
