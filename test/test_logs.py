"""The logging layer: credentials scrubbed from every part of a record, and bounded refusal logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from log_capture import captured

from tvm_observability.aggregator.logs import REDACTED, FleetJsonFormatter, LogSummary, RedactSecrets
from tvm_observability.auth import generate_token, hash_token

TOKEN = generate_token()


def emit(redact: RedactSecrets, *args: object, exc: BaseException | None = None, **extra: object) -> str:
    """One record through a handler carrying the filter; the JSON line it writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FleetJsonFormatter(environment="test"))
    handler.addFilter(redact)
    logger = logging.getLogger("test_logs.redaction")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error(*args, exc_info=exc, extra=extra)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_credentials_are_scrubbed_from_message_args_extras_and_tracebacks() -> None:
    redact = RedactSecrets()
    digests = {hash_token(TOKEN)}
    redact.is_token = lambda word: hash_token(word) in digests
    try:
        raise ValueError(f"bad line b'Authorization: Bearer {TOKEN}\\x01'")
    except ValueError as exc:
        line = emit(redact, "header %s and %s", f"Bearer {TOKEN}", f"token={TOKEN};", exc=exc, raw=f"x {TOKEN} y")
    assert TOKEN not in line
    record = json.loads(line)
    assert record["message"] == f"header Bearer {REDACTED} and token={REDACTED};"
    assert record["context"]["raw"] == f"x {REDACTED} y"
    assert "Authorization: " + REDACTED in record["context"]["exc_info"]


def test_ordinary_text_is_left_alone() -> None:
    line = emit(RedactSecrets(), "vehicle %s pushed %d times", "V1-with-a-long-name-here", 3)
    assert json.loads(line)["message"] == "vehicle V1-with-a-long-name-here pushed 3 times"


def test_log_summary_bounds_lines_and_remembered_keys() -> None:
    now = [0.0]
    logger = logging.getLogger("test_logs.summary")
    summary = LogSummary(logger, "refused", burst=2, interval_s=10, max_keys=3, monotonic=lambda: now[0])
    admitted = [summary.admit("unauthenticated", f"10.0.0.{i % 50}") for i in range(1000)]
    assert sum(admitted) == 3 * 2  # 3 sources remembered, 2 lines each
    assert len(summary._logged) == 3 and len(summary._held_sources) <= 3
    with captured("test_logs.summary") as logs:
        now[0] = 10.0
        assert summary.admit("unauthenticated", "10.0.0.1")
    (record,) = logs.records
    assert record.not_logged == {"unauthenticated": 994}  # type: ignore[attr-defined]


def test_log_summary_is_written_when_the_refusals_stop() -> None:
    async def scenario() -> list[logging.LogRecord]:
        logger = logging.getLogger("test_logs.timer")
        summary = LogSummary(logger, "refused", burst=1, interval_s=0.2)
        with captured("test_logs.timer") as logs:
            for _ in range(5):
                summary.admit("rate_limited", "127.0.0.1")
            for _ in range(200):  # no further refusal: the timer alone writes the summary
                if logs.records:
                    break
                await asyncio.sleep(0.05)
        return logs.records

    (record,) = asyncio.run(scenario())
    assert record.not_logged == {"rate_limited": 4}  # type: ignore[attr-defined]


def test_log_summary_bounds_lines_per_kind_whatever_the_number_of_sources() -> None:
    now = [0.0]
    summary = LogSummary(logging.getLogger("test_logs.many"), "refused", max_lines=20, monotonic=lambda: now[0])
    admitted = [summary.admit("header_timeout", f"10.{i // 250}.{i % 250}.1") for i in range(1000)]
    assert sum(admitted) == 20
    assert summary.admit("max_pending", "10.0.0.1")  # another kind has its own lines


def test_a_log_call_with_arguments_that_do_not_fit_is_still_scrubbed() -> None:
    line = emit(RedactSecrets(), "only one %s here", "Bearer abcdefghijklmnopqrstuvwxyz", "second")
    assert "abcdefghijklmnopqrstuvwxyz" not in line and REDACTED in line
