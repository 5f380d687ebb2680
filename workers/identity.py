"""Which worker did something: node id and pid, since host names tell apart neither two Ray nodes on
one host (containers, a test cluster) nor a node from its replacement on a reused host name."""

from __future__ import annotations

import os
import socket
import sys

#: Characters of Ray's node id kept in a worker's name (56 hex digits in full; 8 tell nodes apart).
NODE_ID_CHARS = 8


def node_id() -> str:
    """This process's Ray node id, shortened; the host name outside Ray (a worker built in a test, or
    a run without Ray, which need not import it: a Ray worker always has)."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())[:NODE_ID_CHARS]
    except Exception:  # noqa: BLE001 - a name is never worth failing a worker for
        pass
    return socket.gethostname()


def worker_name(device: str | None = None) -> str:
    """``<node>:<pid>`` (``:<device>`` appended when given), as the summary and stored records show it."""
    name = f"{node_id()}:{os.getpid()}"
    return f"{name}:{device}" if device else name
