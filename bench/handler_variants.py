"""Where the aggregator's CPU per push goes: the real CLI with parts of the push handler swapped out.

    python -m bench.handler_variants VARIANT --config FILE

- `read-only`: the handler only reads the body and answers 200, and the RED-metrics middleware does nothing
  (the aggregator process at the floor: aiohttp, its loop, GC settings);
- `red-metrics`: as read-only, with the real request-counting middleware;
- `json-answer`: as red-metrics, answering with the real JSON acknowledgement and X-Request-Id;
- `aiohttp`: the real push handler, every push through aiohttp (the push fast path off);
- `full`: the aggregator unchanged (plain pushes answered by aggregator/fast_push.py).

Every variant but `full` runs without the fast path, so that aiohttp's handler is what is measured.

Each step's cost is its CPU per push minus the previous step's, in the same run (bench/run.py).
A profiling aid only: nothing here is used by the service.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from aiohttp import web

from tvm_observability.aggregator import app, cli
from tvm_observability.aggregator.fleet import Outcome
from tvm_observability.model import VehicleSnapshot

VARIANTS = ("read-only", "red-metrics", "json-answer", "aiohttp", "full")


async def _read_only(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


_ACKNOWLEDGED = VehicleSnapshot("veh-00000", "bench-boot", 1, 0.0)


async def _json_answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        body=app.acknowledgement(Outcome.ACCEPTED, _ACKNOWLEDGED),
        headers={"Content-Type": app.ACK_CONTENT_TYPE, "X-Request-Id": app._request_id(request)},
    )


@web.middleware
async def _passthrough(request: web.Request, handler: app.Handler) -> web.StreamResponse:
    return await handler(request)


class _AiohttpOnly:
    """In place of fast_push.FastPushConnections: every connection is aiohttp's from the start."""

    def __init__(self, runtime: object, aiohttp_handlers: Callable[[], asyncio.Protocol]) -> None:
        self.aiohttp_handlers = aiohttp_handlers

    def __call__(self) -> asyncio.Protocol:
        return self.aiohttp_handlers()

    def close_idle(self) -> None:
        pass


def main() -> int:
    variant, args = sys.argv[1], sys.argv[2:]
    if variant not in VARIANTS:
        raise SystemExit(f"variant must be one of {', '.join(VARIANTS)}")
    if variant != "full":
        cli.FastPushConnections = _AiohttpOnly  # type: ignore[assignment,misc]
    if variant == "read-only":
        app._red_metrics = _passthrough
    if variant in ("read-only", "red-metrics"):
        app.handle_telemetry = _read_only  # type: ignore[assignment]
    if variant == "json-answer":
        app.handle_telemetry = _json_answer  # type: ignore[assignment]
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
