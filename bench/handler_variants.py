"""Where the aggregator's CPU per push goes: the real CLI with parts of the push handler swapped out.

    python -m bench.handler_variants VARIANT --config FILE

- `read-only`: the handler only reads the body and answers 200, and the RED-metrics middleware does nothing
  (the aggregator process at the floor: aiohttp, its loop, GC settings);
- `red-metrics`: as read-only, with the real request-counting middleware;
- `json-answer`: as red-metrics, answering with the real JSON acknowledgement and X-Request-Id;
- `full`: the aggregator unchanged.

Each step's cost is its CPU per push minus the previous step's, in the same run (bench/run.py).
A profiling aid only: nothing here is used by the service.
"""

from __future__ import annotations

import sys

from aiohttp import web

from tvm_observability.aggregator import app, cli
from tvm_observability.aggregator.fleet import Outcome
from tvm_observability.model import VehicleSnapshot

VARIANTS = ("read-only", "red-metrics", "json-answer", "full")


async def _read_only(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


_ACKNOWLEDGED = VehicleSnapshot("veh-00000", "bench-boot", 1, 0.0)


async def _json_answer(request: web.Request) -> web.Response:
    await request.read()
    return app._acknowledge(Outcome.ACCEPTED, _ACKNOWLEDGED, app._request_id(request))


@web.middleware
async def _passthrough(request: web.Request, handler: app.Handler) -> web.StreamResponse:
    return await handler(request)


def main() -> int:
    variant, args = sys.argv[1], sys.argv[2:]
    if variant not in VARIANTS:
        raise SystemExit(f"variant must be one of {', '.join(VARIANTS)}")
    if variant == "read-only":
        app._red_metrics = _passthrough
    if variant in ("read-only", "red-metrics"):
        app.handle_telemetry = _read_only  # type: ignore[assignment]
    if variant == "json-answer":
        app.handle_telemetry = _json_answer  # type: ignore[assignment]
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
