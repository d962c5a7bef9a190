"""The floor: an aiohttp server whose handler reads the body and answers 200, nothing else.

Same aiohttp, same event loop choice (uvloop when installed, as the aggregator's CLI) and no access log,
so (aggregator CPU per push) / (this CPU per push) is the cost of the aggregator's own work.

    python -m bench.bare_server PORT
"""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ready")


def main() -> None:
    app = web.Application()
    app.router.add_post("/api/v1/telemetry", handle)
    app.router.add_get("/ready", ready)
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
