"""State file cost for a large fleet: what a save costs now (msgpack, snapshots kept as received)
against the JSON encoding it replaced (every snapshot re-encoded), measured in the same run.

    .venv/bin/python bench/bench_state_file.py [VEHICLES]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from support import FakeClock, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import state_image
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    ids = [f"V{i:05d}" for i in range(count)]
    fleet = FleetState(ids, FleetSettings(offline_after_s=15), clock=FakeClock())
    for vid in ids:
        body = codec.encode_wire(wire_snapshot(vid, errors={"E_LIDAR_TIMEOUT": 3}))
        fleet.apply(parse_snapshot(codec.decode(body)), body)

    def save_msgpack() -> int:
        return len(codec.pack_state(state_image.to_image(fleet)))

    def save_json_reencoded() -> int:
        image = state_image.to_image(fleet)
        for vid, saved in image["vehicles"].items():
            vehicle = fleet.get(vid)
            saved["snapshot"] = vehicle.snapshot.to_wire() if vehicle and vehicle.snapshot else None
        return len(json.dumps(image, separators=(",", ":")))

    now, before = median_ms(save_msgpack), median_ms(save_json_reencoded)
    print(f"vehicles: {count}")
    print(f"msgpack, snapshots as received: {now:7.1f} ms  ({save_msgpack() / 1e6:.1f} MB)")
    print(f"JSON, snapshots re-encoded:     {before:7.1f} ms  ({save_json_reencoded() / 1e6:.1f} MB)")
    print(f"ratio: {now / before:.2f}")


if __name__ == "__main__":
    main()
