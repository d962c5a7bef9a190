"""Writes state-format-2.msgpack: a state file as the aggregator of commit 7065513 (state format 2) saved it.

Run against that version, not this one (its FleetState has to_image(); this one's image is format 3):

    git archive 7065513 tvm_observability test/support.py | tar -x -C /tmp/format2
    PYTHONPATH=/tmp/format2:/tmp/format2/test python test/data/make_state_format_2.py test/data/state-format-2.msgpack

test_state_file.py restores it with this version and checks every counter listed in EXPECTED there.
"""

from __future__ import annotations

import sys

from support import FakeClock, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.aggregator.persistence import StateFile


def push(fleet: FleetState, vehicle_id: str, boot_id: str, seq: int, **fields: object) -> None:
    body = codec.encode_wire(wire_snapshot(vehicle_id, boot_id=boot_id, seq=seq, sent_at=1_800_000_000.0, **fields))
    fleet.apply(parse_snapshot(codec.decode(body)), body)


def main(path: str) -> None:
    clock = FakeClock()
    fleet = FleetState(("V1", "V2", "V3"), FleetSettings(max_error_code_series=3, max_unknown_vehicles=5), clock=clock)
    for boot in range(6):  # V1: six boots, so two are retired into the sum
        push(fleet, "V1", f"v1-boot{boot}", 3, errors={"E1": boot + 1, "E2": 1, "E3": 2})
        clock.advance(1)
    push(fleet, "V1", "v1-boot5", 7, errors={"E1": 6, "E2": 1, "E3": 2, "E4": 4}, status="charging")
    push(fleet, "V3", "v3-a", 12, errors={"E_LIDAR": 9}, battery={"percentage": 11.0, "age_s": 0.1})
    clock.advance(30)
    push(fleet, "X7", "x7-a", 2)
    StateFile(path).save(fleet.to_image())


if __name__ == "__main__":
    main(sys.argv[1])
