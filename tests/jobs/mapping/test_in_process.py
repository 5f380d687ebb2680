"""``jobs.attribute --in-process``: the shards on one replica in the driver's process, without Ray. Its
output holds the actor pool's bytes, a rerun on Ray resumes it, a failing shard stops it in one line,
a transient one is retried, and it never imports Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from jobs import attribute
from jobs.mapping import in_process
from jobs.runtime.cli import JobStopped
from jobs.runtime.runner import Runner
from storage.maps.reader import read_maps, read_run
from tests.jobs.attribute_support import FM, METHODS, check_exactly_once, source_ids
from workers.attributor import ShardFailed, TransientShardFailure


def test_in_process_maps_equal_the_actor_pools_and_a_ray_rerun_resumes_them(reference, checkpoint, tmp_path, capsys
                                                                            ) -> None:
    """Half of the FM job in this process, then the whole job on Ray into the same output: the rerun
    computes only the other half, and every map equals the reference run's (the actor pool's) bytes."""
    out = str(tmp_path / "maps")
    at = FM.index("--limit") + 1
    half = [*FM[:at], str(int(FM[at]) // 2), *FM[at + 1:]]  # the first half of FM's samples
    threads, ours = torch.get_num_threads(), (os.cpu_count() or 1) + 1  # not what the replica sets (every CPU)
    torch.set_num_threads(ours)
    try:
        assert attribute.main(["--checkpoint", checkpoint, "--output", out, *half, "--in-process"]) == 0
        assert torch.get_num_threads() == ours  # the process got its own back
    finally:
        torch.set_num_threads(threads)
    assert read_run(out)["status"] == "complete"
    capsys.readouterr()
    assert attribute.main(["--checkpoint", checkpoint, "--output", out, *FM]) == 0
    assert "400 samples in 8 shards (4 new); 4 already committed, 4 to do" in capsys.readouterr().out
    check_exactly_once(out, None, source_ids(limit=400))
    for method in METHODS:
        ours, ray = read_maps(out, method), read_maps(reference["url"], method, reference["options"])
        assert list(ours.sample_id) == list(ray.sample_id)
        assert all(np.array_equal(a, b) for a, b in zip(ours["map"], ray["map"])), method
        assert ours.drop(columns="map").equals(ray.drop(columns="map")), method


def test_a_failing_shard_stops_the_run_in_one_line_and_ray_is_never_imported(checkpoint, tmp_path) -> None:
    """Every sample fails attribution alone (a Grad-CAM layer without a spatial output): exit 1, one
    line naming the shard and the cause, run.json "failed" with the same; in a fresh process that
    never imports Ray."""
    out = str(tmp_path / "maps")
    script = ("import sys\nfrom jobs import attribute\n"
              f"code = attribute.main(['--checkpoint', {checkpoint!r}, '--output', {out!r}, '--limit', '8', "
              "'--shard-size', '4', '--methods', 'grad_cam:layer=fc', '--in-process', '--no-progress'])\n"
              "print('ray imported' if 'ray' in sys.modules else 'no ray', code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "no ray 1", done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"jobs\.attribute: error: the job stopped with 0 of 2 shards committed: shard 000000 \(4 samples "
                    r"from 'fashion-mnist/test/00000'\) failed on worker \S+: AttributionError: grad_cam layer 'fc'",
                    last), last
    run = read_run(out)
    assert run["status"] == "failed" and "AttributionError: grad_cam layer 'fc'" in run["reason"]


def test_in_process_with_several_workers_or_a_cluster_is_refused(tmp_path, capfd) -> None:
    for extra in (["--workers", "2"], ["--ray-address", "127.0.0.1:6379"]):
        assert attribute.main(["--output", str(tmp_path / "maps"), "--in-process", *extra]) == 2
        last = capfd.readouterr().err.strip().splitlines()[-1]
        assert last == ("jobs.attribute: error: --in-process runs one model replica in this process: leave out "
                        "--ray-address and --workers")
    assert not (tmp_path / "maps").exists()  # refused before anything was written

    assert attribute.main(["--output", str(tmp_path / "maps"), "--in-process", "--dry-run", "--limit", "8"]) == 0
    assert ", in this process, without Ray (--device auto)" in capfd.readouterr().out


class Flaky:
    """A worker whose first ``failures`` calls fail transiently (a store that kept failing)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientShardFailure(f"shard {batch['segment'][0]} failed: OSError: the store timed out")
        return {"shard_id": np.array([batch["segment"][0]]), "samples": np.array([4]), "errors": np.array([0])}

    def close(self) -> None:
        """Nothing to undo (a ShardAttributor's close: jobs.mapping.in_process closes it on a stop)."""


def test_a_transient_failure_is_retried_and_past_the_retries_names_the_tries(monkeypatch) -> None:
    monkeypatch.setattr(in_process, "BACKOFF_SECONDS", 0.0)
    rows = [{"segment": "000000", "runs": "[[0, 0, [\"gradient\"]]]"}]
    worker = Flaky(2)
    assert list(in_process.shard_results(worker, rows, retries=2)) == [{"shard_id": "000000", "samples": 4,
                                                                        "errors": 0}]
    assert worker.calls == 3

    runner = Runner("attribute", "shard", ["000000"], no_bar=True, retries=2)
    worker = Flaky(5)
    runner.run_rows(in_process.shard_results(worker, rows, runner.retries), lambda r: (r["samples"], r["errors"]),
                    failures=(ShardFailed,))
    assert worker.calls == 3 and runner.failures == [
        (None, "shard 000000 failed: OSError: the store timed out (the shard was tried 3 times)")]
    with pytest.raises(JobStopped, match=r"^the job stopped with 0 of 1 shards committed: shard 000000 failed: "
                       r"OSError: the store timed out \(the shard was tried 3 times\); rerun to resume$"):
        runner.stop_if_failed()
