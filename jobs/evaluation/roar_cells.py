"""ROAR's cells: which there are, which are already committed, and running the rest through the job
runner (jobs.runtime.runner), whose units they are: a cell's key is its file name, and the cells
done are those whose files hold this configuration's fingerprint.

A cell is a dict ``{method, t, seed, input, fill}``: ``input`` is ``pixels`` (ROAR, with ``fill``
mean or nli) or ``mask`` (the leakage control, fill ``-``); the unmodified baseline is method
``none`` at t = 0 (t = 100 under KAR). Cells that differ only by seed share their images: one
``prepare`` task per (method, t, input, fill) builds them, its results stay in Ray's object
store until the last of those cells has finished.

Tested by tests/jobs/test_roar.py (cells stored, reused and recomputed).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from workers.roar_data import MASK, NONE, PIXELS

Key = tuple[str, int, str, str]


def plan_cells(methods: Sequence[str], thresholds: Sequence[int], seeds: Sequence[int], kar: bool,
               fills: Sequence[str] = ("mean",), mask_control: bool = False,
               no_mask: Sequence[str] = ()) -> list[dict]:
    """Every cell of the grid, seed by seed (a partial run has every method at the first seeds);
    ``no_mask`` lists methods without a mask control."""
    cells = [{"method": NONE, "t": 100 if kar else 0, "seed": s, "input": PIXELS, "fill": "-"} for s in seeds]
    for s in seeds:
        for m in methods:
            for t in thresholds:
                cells += [{"method": m, "t": t, "seed": s, "input": PIXELS, "fill": f} for f in fills]
                if mask_control and m not in no_mask:
                    cells.append({"method": m, "t": t, "seed": s, "input": MASK, "fill": "-"})
    return cells


def key_of(cell: dict) -> Key:
    return (cell["method"], int(cell["t"]), cell["input"], cell["fill"])


def name_of(cell: dict) -> str:
    from workers.roar import cell_name

    return cell_name(cell["method"], cell["t"], cell["seed"], cell["input"], cell["fill"])


def read_cell(where: Any, cell: dict) -> dict | None:
    """A finished cell's result file under the output ``where`` (a Location), or None."""
    from workers.roar import CELL_DIR

    data = where.get_optional(f"{CELL_DIR}/{name_of(cell)}.json")
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None  # a torn or foreign file: recompute the cell


def finished_cells(where: Any, cells: list[dict], fingerprint: str) -> tuple[dict[str, dict], int]:
    """(records of the cells already committed with these settings by name, count of stale files)."""
    finished, stale = {}, 0
    for cell in cells:
        record = read_cell(where, cell)
        if record is not None and record.get("fingerprint") == fingerprint:
            finished[name_of(cell)] = record
        stale += record is not None and record.get("fingerprint") != fingerprint
    return finished, stale


class Prepared:
    """Each key's prepared (train, test) references (jobs.runtime.tasks), made on first use and dropped after
    its last cell."""

    def __init__(self, todo: list[dict], task: Any, config: dict, data: dict[str, Any], put: Any) -> None:
        self.task, self.config, self.data, self.put = task, config, data, put
        self.left: dict[Key, int] = {}
        for cell in todo:
            if cell["method"] != NONE:
                self.left[key_of(cell)] = self.left.get(key_of(cell), 0) + 1
        self.refs: dict[Key, tuple[Any, Any]] = {}
        self.maps: dict[str, tuple[Any, Any]] = {}

    def images(self, cell: dict) -> tuple[Any, Any]:
        """References of the cell's train and test images."""
        if cell["method"] == NONE:
            return self.data["train_images"], self.data["test_images"]
        key = key_of(cell)
        if key not in self.refs:
            method = cell["method"]
            if method not in self.maps:
                self.maps[method] = (self.put(self.data["train_maps"][method]),
                                     self.put(self.data["test_maps"][method]))
            train_m, test_m = self.maps[method]
            self.refs[key] = tuple(self.task.remote(cell, self.config, self.data["train_images"], train_m,
                                                    self.data["train_seeds"], self.data["test_images"], test_m,
                                                    self.data["test_seeds"]))
        return self.refs[key]

    def done(self, cell: dict) -> None:
        if cell["method"] == NONE:
            return
        key = key_of(cell)
        self.left[key] -= 1
        if self.left[key] == 0:
            self.refs.pop(key, None)  # Ray frees the arrays once no task holds them
            if not any(n for k, n in self.left.items() if k[0] == cell["method"]):
                self.maps.pop(cell["method"], None)


def run_cells(todo: list[dict], config: dict, arrays: dict, args: argparse.Namespace, runner: Any) -> list[dict]:
    """Run the pending cells as tasks through the job's ``runner`` (jobs.runtime.runner), at most
    ``workers`` at once on Ray; returns the results (the runner keeps the failures). In this process
    (``--in-process``) the cells run one at a time, each with the threads it would have on a local Ray
    of this machine, so that it computes the same numbers."""
    from jobs.runtime.cluster import plan_workers
    from workers.roar import prepare, run_cell

    runner.start(args.ray_address)
    sizing = plan_workers(runner.tasks.resources(), args.device, args.workers, default_cpu_workers="cpus")
    config = {**config, "threads": sizing.threads or None, "device": sizing.device}
    task = runner.remote(run_cell, num_gpus=sizing.gpus, num_cpus=sizing.cpus)
    data = {k: (v if k.endswith("maps") else runner.put(v)) for k, v in arrays.items()}
    prepared = Prepared(todo, runner.remote(prepare, num_cpus=max(1, sizing.cpus if not sizing.gpus else 1),
                                            num_returns=2), config, data, runner.put)
    results: list[dict] = []
    print(f"{len(todo)} cells one at a time in this process ({sizing.each} each)" if runner.tasks.in_process
          else f"{len(todo)} cells on {sizing.describe}")

    def submit(cell: dict) -> Any:
        train_x, test_x = prepared.images(cell)
        return task.remote(cell, config, train_x, data["train_labels"], test_x, data["test_labels"])

    def commit(cell: dict, result: dict) -> None:  # run_cell committed its file
        results.append(result)
        runner.progress.set_postfix_str(f"{name_of(cell)}: acc {result['accuracy']:.3f} in {result['seconds']:.1f}s")

    runner.run_tasks(todo, name_of, submit, commit, max_running=sizing.workers, settled=prepared.done)
    return results
