"""Pusher backoff and link-level logic (pure parts; the network path is covered end to end)."""

from __future__ import annotations

from tvm_observability.bridge.pusher import Backoff, PushStatus, link_level, links_level


def test_backoff_doubles_caps_and_jitters():
    top = Backoff(1.0, 5.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    bottom = Backoff(1.0, 5.0, rng=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 2.5]
    bottom.reset()
    assert bottom.next_delay() == 0.5


def test_backoff_survives_long_outages():
    b = Backoff(1.0, 5.0, rng=lambda: 1.0)
    for _ in range(10_000):
        delay = b.next_delay()
    assert delay == 5.0


def test_link_levels():
    assert link_level(PushStatus(), now=1.0, started=0.0, error_after_s=10)[0] == "WARN"
    assert link_level(PushStatus(), now=11.0, started=0.0, error_after_s=10)[0] == "ERROR"
    ok = PushStatus(attempts=1, accepted=1, last_success=5.0)
    assert link_level(ok, now=6.0, started=0.0, error_after_s=10) == ("OK", "pushing")
    failing = PushStatus(accepted=1, consecutive_failures=2, last_success=5.0, last_error="timed out")
    assert link_level(failing, now=8.0, started=0.0, error_after_s=10) == ("WARN", "retrying: timed out")
    assert link_level(failing, now=16.0, started=0.0, error_after_s=10)[0] == "ERROR"
    rejected = PushStatus(consecutive_failures=1, rejected=True, last_error="HTTP 401 unauthorized")
    assert link_level(rejected, now=1.0, started=0.0, error_after_s=10)[0] == "ERROR"


def test_links_to_two_replicas_count_the_best_and_warn_while_one_fails():
    ok, warn, error = ("OK", "pushing"), ("WARN", "retrying: refused"), ("ERROR", "no accepted push for 12 s")
    assert links_level([ok]) == ok
    assert links_level([ok, ok])[0] == "OK"
    assert links_level([ok, error]) == (
        "WARN",
        "aggregator 1 OK: pushing; aggregator 2 ERROR: no accepted push for 12 s",
    )
    assert links_level([error, ok])[0] == "WARN"
    assert links_level([warn, error])[0] == "WARN"
    assert links_level([error, error])[0] == "ERROR"
