"""Explore a map dataset in the browser: view OUTPUT serves a local web page over it.

A gallery of samples with each method's map over the image the model saw, a colour scale and
its legend, clip percentiles and polarity; filters (label, target, prediction, correct or not,
method, error kind) and sorting by any per-sample detail; a page per sample with every method's
map, its details and errors, its strategy cluster and the evaluation results of its methods, and the
run history; a clusters page per analysed method and class (jobs.analyze: each cluster's size and
mean map, the 2-D embedding, a link to the gallery filtered to the cluster: jobs.reporting.view_analysis).
Filtering and sorting read the small columns
only (jobs.reporting.view_query), and maps are fetched one by one as a page shows them, so a million-sample
output opens as fast as a small one. Local paths and s3:// alike, through --storage-options or
$STORAGE_OPTIONS. Bound to 127.0.0.1 unless --host says otherwise: the page shows the data to
anyone who can reach the port.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jobs.runtime.cli import JobError, job_parser, non_negative_int, run_main, storage_flags, storage_options_from

#: The page's files (plain HTML, CSS and JS shipped with the package: no build step, no CDN).
STATIC = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
          "/sample.html": ("sample.html", "text/html"), "/errors.html": ("errors.html", "text/html"),
          "/clusters.html": ("clusters.html", "text/html"),
          "/view.js": ("view.js", "text/javascript"), "/view.css": ("view.css", "text/css")}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


class Explorer:
    """What the page asks for, answered from one map dataset (and its source, for the images)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None, source: str | None = None) -> None:
        from jobs.inspect import inspect_output
        from jobs.reporting.view_analysis import Analyses
        from jobs.reporting.view_query import MapIndex

        self.url, self.storage_options = url, storage_options
        self.summary = inspect_output(url, storage_options)  # one line for a path that is not a map dataset
        self.index = MapIndex(url, storage_options)
        self.analyses = Analyses(self.index.fs, self.index.root, url)
        self.source = source
        self._run: dict | None = None
        self._source: Any = None
        self._lock = threading.Lock()

    def _open_source(self, run: Mapping[str, Any]) -> Any:
        """The source the run record names (or --source), opened as join_with_source would open it."""
        from storage.io.fs import same_url
        from storage.sources import open_source

        config = run.get("config") or {}
        url = self.source or config.get("source")
        if not url:
            raise JobError(f"{self.url}'s run record names no source: pass --source")
        return open_source(url, split=config.get("split") or "test", storage_options=self.storage_options,
                           kind=config.get("source_format") if same_url(config.get("source"), url) else None)

    def info(self) -> dict[str, Any]:
        from jobs.reporting.view_colors import DEFAULT_LOWER, DEFAULT_UPPER, POLARITIES, luts

        return {**self.summary, "columns": self.index.columns, "sortable": self.index.sortable,
                "map_methods": self.index.methods(), "polarities": POLARITIES, "analyses": self.analyses.methods(),
                "clip": {"lower": DEFAULT_LOWER, "upper": DEFAULT_UPPER}, "luts": luts()}

    def map_json(self, query: Mapping[str, str]) -> dict[str, Any]:
        import numpy as np

        values = self.index.map_values(_need(query, "method"), _need(query, "shard_id"), _need(query, "sample_id"))
        flat = values.astype(np.float64).ravel()
        return {"height": int(values.shape[0]), "width": int(values.shape[1]),
                "values": [float(v) if np.isfinite(v) else None for v in flat]}

    @functools.lru_cache(maxsize=512)
    def image_png(self, sample_id: str) -> bytes:
        """The image the model saw (storage.maps.reader.join_with_source), as PNG."""
        import pandas as pd
        from PIL import Image

        from storage.maps.reader import join_with_source, read_run

        with self._lock:  # the source is opened once (listing it may be slow) and read by one thread at a time
            if self._run is None:  # both or neither: a failed open is tried again by the next image
                run = read_run(self.url, self.storage_options)
                self._source, self._run = self._open_source(run), run
            frame = join_with_source(pd.DataFrame({"sample_id": [sample_id]}), self._source, self._run)
        image = frame["image"].iloc[0]
        channels = image.shape[2] if image.ndim == 3 else 1
        picture = Image.fromarray(image[..., 0] if channels in (1, 2) else image[..., :channels],
                                  mode={1: "L", 2: "L", 3: "RGB", 4: "RGBA"}[channels])
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        return buf.getvalue()


def _need(query: Mapping[str, str], name: str) -> str:
    from jobs.reporting.view_query import ViewError

    if not query.get(name):
        raise ViewError(f"missing query parameter {name}=")
    return query[name]


def _whole(query: Mapping[str, str], name: str) -> int:
    from jobs.reporting.view_analysis import whole

    _need(query, name)
    return whole(query, name)


def handler_for(explorer: Explorer, allowed_hosts: set[str] | None) -> type[BaseHTTPRequestHandler]:
    """The request handler: static files, then the JSON API under /api/. ``allowed_hosts``: the
    names a request's Host header may give (None: any, for a server the operator exposed)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "pathway-view"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: one line per map otherwise
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            from jobs.reporting.view_query import ViewError
            from storage.io.fs import InvalidStorageInput, StorageError, StorageNotFound, redact_text

            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if allowed_hosts is not None and host not in allowed_hosts:  # DNS rebinding (make_server)
                return self._send(403, b"unexpected Host header", "text/plain")
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                if parts.path in STATIC:
                    name, kind = STATIC[parts.path]
                    return self._send(200, resources.files("jobs.reporting.view_static").joinpath(name).read_bytes(), kind)
                if parts.path == "/api/info":
                    return self._json(explorer.info())
                if parts.path == "/api/rows":
                    return self._json(explorer.index.rows(query, explorer.analyses.cluster_filter(query)))
                if parts.path == "/api/clusters":
                    return self._json(explorer.analyses.class_detail(_need(query, "method"),
                                                                     _whole(query, "class")))
                if parts.path == "/api/evaluation":
                    methods = [m for m in (query.get("methods") or "").split(",") if m]
                    return self._json(explorer.analyses.evaluation(methods or None))
                if parts.path == "/api/errors":
                    return self._json(explorer.index.error_rows(query))
                if parts.path == "/api/sample":
                    sample_id = _need(query, "sample_id")
                    return self._json({"rows": explorer.index.sample(sample_id, query.get("shard_id") or None),
                                       "errors": explorer.index.sample_errors(sample_id)})
                if parts.path == "/api/sample_clusters":  # the sample page's only: it scans the cluster tables
                    return self._json({"rows": explorer.analyses.sample_clusters(_need(query, "sample_id"))})
                if parts.path == "/api/map":
                    return self._json(explorer.map_json(query))
                if parts.path == "/api/image":
                    return self._send(200, explorer.image_png(_need(query, "sample_id")), "image/png")
                return self._send(404, b"not found", "text/plain")
            except StorageNotFound as err:
                return self._json({"error": redact_text(str(err))}, 404)
            except (ViewError, InvalidStorageInput, JobError) as err:
                return self._json({"error": redact_text(str(err))}, 400)
            except StorageError as err:
                return self._json({"error": redact_text(str(err))}, 502)

        def _json(self, obj: Any, status: int = 200) -> None:
            self._send(status, json.dumps(obj, default=str, allow_nan=False).encode(), "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8" if kind.startswith(("text", "application"))
                             else kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the page moved on before its image came
                pass

    return Handler


def make_server(url: str, storage_options: Mapping[str, Any] | None = None, host: str = "127.0.0.1",
                port: int = 0, source: str | None = None) -> ThreadingHTTPServer:
    """The explorer's HTTP server, bound but not yet serving (``serve_forever`` serves); port 0 takes a
    free port (``server.server_address``)."""
    explorer = Explorer(url, storage_options, source)
    try:
        # On loopback, a request must name loopback: a web page elsewhere that points its own name at
        # 127.0.0.1 (DNS rebinding) gets nothing. Another --host is the operator's choice to expose it.
        allowed = LOOPBACK_NAMES if host in LOOPBACK_NAMES else None
        server = ThreadingHTTPServer((host, port), handler_for(explorer, allowed))
    except OSError as err:
        raise JobError(f"cannot listen on {host}:{port}: {err.strerror or err}; pick another --port "
                       "(0 takes a free one)") from None
    server.daemon_threads = True
    return server


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.view", __doc__, [storage_flags()])
    p.add_argument("output", help="the map dataset: the --output of jobs.attribute (local path or URL)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on; another than loopback shows the maps to the network")
    p.add_argument("--port", type=non_negative_int, default=8765, help="the port; 0 takes a free one")
    p.add_argument("--source", default=None,
                   help="where the images are (default: the source the run record names)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from storage.io.fs import redact_url

    server = make_server(args.output, storage_options_from(args.storage_options), args.host, args.port, args.source)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"view: serving {redact_url(args.output)} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the way a viewer ends: not a failure
        print("view: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.view", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
