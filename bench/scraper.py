"""A Prometheus-like scraper for the load runs: `GET /metrics` of the whole fleet every `interval` seconds, in its
own process (pinned beside the load generator), for a bounded time; prints one JSON summary when it stops.

    python -m bench.scraper URL --interval 15 --duration 60 [--first 5]

Each scrape is timed from the request to the last byte, as Prometheus's `scrape_duration_seconds` is; the body is
read whole and counted (samples = lines not starting with `#`), then dropped. The aggregator does the same work for
this client as for Prometheus (its parsing and storage happen in Prometheus, not in the aggregator).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

MAX_DURATION_S = 1800.0


def scrape(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return {
        "at": time.time(),
        "status": response.status,
        "seconds": time.perf_counter() - started,
        "bytes": len(body),
        "samples": _samples(body),
    }


def _samples(body: bytes) -> int:
    """Lines that do not start with `#` (an exposition has no empty ones), counted without splitting: the scraper
    shares its core with the load generator, and splitting a 10,000-vehicle body into lines took ~100 ms from it
    (pushes sent late: latency the server did not cause)."""
    lines = body.count(b"\n") + (not body.endswith(b"\n") and bool(body))
    comments = body.count(b"\n#") + body.startswith(b"#")
    return lines - comments


def run(url: str, interval_s: float, duration_s: float, first_s: float, timeout_s: float) -> list[dict[str, Any]]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    deadline = time.monotonic() + min(duration_s, MAX_DURATION_S)
    due = time.monotonic() + first_s
    scrapes: list[dict[str, Any]] = []
    while due < deadline:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            scrapes.append(scrape(parts.hostname, parts.port, timeout_s))
        except OSError as exc:
            scrapes.append({"at": time.time(), "status": 0, "error": f"{type(exc).__name__}: {exc}"})
        due += interval_s
    return scrapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scraper", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between scrapes (Prometheus's default)")
    parser.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds")
    parser.add_argument("--first", type=float, default=0.0, help="seconds before the first scrape")
    parser.add_argument("--timeout", type=float, default=10.0, help="per scrape (Prometheus's scrape_timeout)")
    options = parser.parse_args(argv)
    print(json.dumps(run(options.url, options.interval, options.duration, options.first, options.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
