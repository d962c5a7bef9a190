"""Decode + validation cost per push body: today's two steps (codec.decode, then parse_snapshot) against the one
the app calls (ingest.decode_snapshot: msgspec's one pass, the two steps where that cannot accept), in one run.

    python -m bench.decode_cost [REPEATS]

CPU time (process_time) per body, the median of 5 runs of REPEATS calls each, for the realistic snapshot of
bench/loadgen.py, the same with 3 events and with 10 error codes, and for bodies the fast path hands on: one
refused (out of range, the refusal named by parse_snapshot) and one with a key schema v1 does not know. The ratio
new/old is from the same run; below 1 the one pass is cheaper.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.loadgen import Vehicle
from tvm_observability import codec
from tvm_observability.aggregator.ingest import IngestLimits, decode_fast, decode_snapshot, parse_snapshot
from tvm_observability.errors import TelemetryError
from tvm_observability.model import VehicleEvent

LIMITS = IngestLimits()


def realistic() -> dict[str, Any]:
    """The loadgen's snapshot of a vehicle without errors, one push in."""
    return Vehicle(1, "boot-a").advance()


def with_events() -> dict[str, Any]:
    wire = realistic()
    wire["errors"] = {"diag:lidar": 1, "rosout:planner": 2}
    wire["events"] = [
        VehicleEvent(
            event_seq=1,
            stamp=wire["sent_at"] - 0.5,
            level="ERROR",
            source="diagnostic",
            component="lidar: driver",
            message="no scans received for 3.0 s",
            code="diag:lidar",
            key_values=(("frequency", "0.0"), ("expected", "10.0"), ("device", "/dev/ttyUSB0")),
        ).to_wire(),
        *(
            VehicleEvent(
                event_seq=seq,
                stamp=wire["sent_at"] - 0.2,
                level="ERROR",
                source="rosout",
                component="/planner",
                message="failed to compute a path to the goal: start is in collision",
                code="rosout:planner",
                file="/opt/ros/humble/src/planner/planner_server.cpp",
                function="computePlan",
                line=412,
            ).to_wire()
            for seq in (2, 3)
        ),
    ]
    return wire


def ten_error_codes() -> dict[str, Any]:
    wire = realistic()
    wire["errors"] = {f"E_MOTOR_{i:02d}": i * 3 + 1 for i in range(10)}
    return wire


def refused() -> dict[str, Any]:
    wire = realistic()
    wire["battery"]["percentage"] = 140.0
    return wire


def unknown_key() -> dict[str, Any]:
    wire = realistic()
    wire["firmware"] = "2.4.1"
    return wire


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "realistic (loadgen)": realistic,
    "with 3 events": with_events,
    "with 10 error codes": ten_error_codes,
    "refused: out of range": refused,
    "unknown key": unknown_key,
}


def old(body: bytes) -> object:
    try:
        return parse_snapshot(codec.decode(body), LIMITS)
    except TelemetryError as exc:
        return exc


def new(body: bytes) -> object:
    try:
        return decode_snapshot(body, LIMITS)
    except TelemetryError as exc:
        return exc


def per_call_us(fn: Callable[[bytes], object], body: bytes, repeats: int) -> float:
    """Median over 5 runs of the CPU time per call of fn(body), in microseconds."""
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeats):
            fn(body)
        runs.append((time.process_time() - started) / repeats * 1e6)
    return statistics.median(runs)


def measure(repeats: int = 20_000) -> list[dict[str, Any]]:
    """One row per case: body size, old and new µs per call, which path the new one took, same answer or not."""
    rows = []
    for name, build in CASES.items():
        body = codec.encode_wire(build())
        rows.append(
            {
                "body": name,
                "bytes": len(body),
                "old_us": per_call_us(old, body, repeats),
                "new_us": per_call_us(new, body, repeats),
                "path": "fast" if decode_fast(body, LIMITS) is not None else "fallback",
                "same_answer": repr(old(body)) == repr(new(body)),
            }
        )
    return rows


def lines(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of `measure`'s rows."""
    out = [
        "| body | bytes | codec.decode + parse_snapshot µs | decode_snapshot µs | new/old | path | same answer |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['body']} | {r['bytes']} | {r['old_us']:.1f} | {r['new_us']:.1f} | {r['new_us'] / r['old_us']:.2f}× "
            f"| {r['path']} | {'yes' if r['same_answer'] else '**no**'} |"
        )
    return out


def main(repeats: int) -> None:
    print("\n".join(lines(measure(repeats))))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
