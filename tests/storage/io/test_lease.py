"""One writer per output: the lease on local disk and on a real S3 server (conditional writes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from storage.io.lease import LEASE, Lease, LeaseHeld, LeaseLost
from storage.io.location import Location


def test_a_second_driver_is_refused_with_the_holder_named(storage_root) -> None:
    url, options = storage_root
    where = Location(url, options)
    with Lease(where, purpose="first run"):
        holder = json.loads(where.get(LEASE))
        with pytest.raises(LeaseHeld, match=r"being written by another run \(first run on .*pid .*valid until"):
            Lease(Location(url, options)).acquire()
    assert where.get_optional(LEASE) is None  # released on exit
    with Lease(where, purpose="second run"):  # free again
        assert json.loads(where.get(LEASE))["purpose"] == "second run"
    assert holder["pid"]


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(storage_root) -> None:
    url, options = storage_root
    old = Lease(Location(url, options), ttl=0.0, purpose="stalled")
    old.acquire()  # expires at once: its holder stopped renewing
    new = Lease(Location(url, options), purpose="new")
    new.acquire()
    with pytest.raises(LeaseLost, match="taken over"):
        old.renew()
    new.renew()
    new.release()


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_at_once(tmp_path) -> None:
    where = Location(str(tmp_path))
    code = ("import sys; from storage.io.location import Location; from storage.io.lease import Lease; "
            "Lease(Location(sys.argv[1]), ttl=3600).acquire()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)  # exits holding it
    assert json.loads(where.get(LEASE))["expires_at"]
    with Lease(where):
        pass


def test_racing_drivers_get_one_lease(storage_root) -> None:
    url, options = storage_root
    leases = [Lease(Location(url, options), purpose=f"driver {i}") for i in range(4)]
    won = []
    for lease in leases:
        try:
            lease.acquire()
            won.append(lease)
        except LeaseHeld:
            pass
    assert len(won) == 1
    won[0].release()
