"""bench.e2e's completeness figures: a loss only once the drain finished."""
from bench.e2e import completeness


def test_a_finished_drain_reports_the_loss():
    assert completeness(1000, 1000, drained=True) == {"drained": True, "lost": 0}
    assert completeness(1000, 997, drained=True) == {"drained": True, "lost": 3}


def test_a_drain_that_gave_up_reports_late_messages_not_a_loss():
    got = completeness(200_000, 46_336, drained=False)
    assert got == {"drained": False, "lost": None, "not_seen_by_netsim_when_the_drain_gave_up": 153_664}
