"""The vehicle's view of its link (bridge/link.py), driven with hand-set clocks: no sockets, no ROS."""

from __future__ import annotations

import itertools

from tvm_observability.bridge.link import LinkTracker
from tvm_observability.model import LinkOutage, LinkReport, Position


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def fix(lat: float, lon: float) -> Position:
    return Position(latitude=lat, longitude=lon, altitude=None, fix=True, age_s=0.1)


def tracker() -> tuple[LinkTracker, Clocks]:
    clocks = Clocks()
    return LinkTracker(lambda: clocks.mono, lambda: clocks.wall), clocks


def test_nothing_reported_before_any_push():
    link, _ = tracker()
    assert link.report() == LinkReport(0, 0, 0.0, rtt_s=None, last_outage=None)


def test_an_outage_begins_at_the_first_failure_and_ends_at_the_next_accepted_push_with_the_positions():
    link, clocks = tracker()
    link.on_position(fix(52.0, 13.0))
    link.succeeded(0.05)
    assert link.report().rtt_s == 0.05 and link.report().outages_total == 0
    clocks.advance(10.0)
    start_wall = clocks.wall
    link.failed(retryable=True)
    link.on_position(fix(52.1, 13.1))  # moving through the dead zone
    clocks.advance(30.0)
    link.failed(retryable=True)
    during = link.report()
    assert during.failed_attempts_total == 2 and during.outages_total == 1
    assert during.outage_seconds_total == 30.0  # the outage in progress counts up to now
    assert during.last_outage == LinkOutage(start_wall, None, 52.0, 13.0)
    link.on_position(fix(52.2, 13.2))
    clocks.advance(15.0)
    link.succeeded(0.4)
    after = link.report()
    assert after == LinkReport(
        failed_attempts_total=2,
        outages_total=1,
        outage_seconds_total=45.0,
        rtt_s=0.4,
        last_outage=LinkOutage(start_wall, start_wall + 45.0, 52.0, 13.0, 52.2, 13.2),
    )
    clocks.advance(100.0)
    assert link.report().outage_seconds_total == 45.0  # no outage in progress: the total stands


def test_counts_are_cumulative_over_outages_and_never_decrease():
    link, clocks = tracker()
    seen: list[LinkReport] = []
    for outage in range(3):
        link.succeeded(0.01)
        clocks.advance(5.0)
        for _ in range(outage + 1):
            link.failed(retryable=True)
            clocks.advance(2.0)
            seen.append(link.report())
    link.succeeded(0.01)
    seen.append(link.report())
    final = seen[-1]
    assert (final.failed_attempts_total, final.outages_total, final.outage_seconds_total) == (6, 3, 12.0)
    for earlier, later in itertools.pairwise(seen):
        assert later.failed_attempts_total >= earlier.failed_attempts_total
        assert later.outages_total >= earlier.outages_total
        assert later.outage_seconds_total >= earlier.outage_seconds_total


def test_a_refusal_is_a_failed_attempt_but_no_outage():
    link, clocks = tracker()
    link.succeeded(0.02)
    link.failed(retryable=False)  # 401: the link carried the answer
    clocks.advance(5.0)
    report = link.report()
    assert report.failed_attempts_total == 1 and report.outages_total == 0 and report.last_outage is None


def test_an_outage_from_the_start_and_positions_without_a_fix():
    link, clocks = tracker()
    link.on_position(None)
    link.failed(retryable=True)  # no push ever succeeded: the link was never up
    assert link.report().last_outage == LinkOutage(clocks.wall, None, None, None)
    link.on_position(fix(48.0, 11.0))
    link.on_position(Position(latitude=None, longitude=None, altitude=None, fix=False, age_s=0.0))  # lost the fix
    clocks.advance(3.0)
    link.succeeded(0.1)
    last = link.report().last_outage
    assert last is not None and (last.end_lat, last.end_lon) == (48.0, 11.0)  # the last known position
