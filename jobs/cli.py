"""What every job's command line shares: method parameters and one-line errors with exit status 1."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from jobs.train import JobError


def parse_params(item: str, rest: str) -> dict[str, Any]:
    """``"percentile=70,scores=taylor"`` -> {"percentile": 70, "scores": "taylor"}; values parsed as JSON."""
    params: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise JobError(f"--methods: expected key=value in {item!r}, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def run_main(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a problem the user can fix is one line on stderr and exit status 1, no traceback."""
    from attribution import AttributionError
    from models.registry import ModelError
    from storage.fs import StorageError

    try:
        return run(args)
    except (JobError, AttributionError, ModelError, StorageError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
