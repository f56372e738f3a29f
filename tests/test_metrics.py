"""The Prometheus text rendering of gateway.metrics: sample values are exact at any size."""
from gateway.metrics import Registry


def _samples(reg: Registry) -> dict[str, str]:
    lines = reg.render().decode().splitlines()
    return dict(line.rsplit(" ", 1) for line in lines if not line.startswith("#"))


def test_values_are_exact_past_six_digits():
    reg = Registry()
    c = reg.counter("c_total", "a counter")
    c.inc(n=1_234_567)
    reg.gauge("g", "a gauge", lambda: [((), 12345.678901)])
    reg.counter_read("r_total", "a counter read", lambda: [((), 9_007_199.0)])
    assert _samples(reg) == {"c_total": "1234567", "g": "12345.678901", "r_total": "9007199"}


def test_small_values_and_infinities_in_the_format_prometheus_reads():
    reg = Registry()
    reg.gauge("g", "a gauge", lambda: [(("a",), 0.5), (("b",), 3.0), (("c",), float("inf")), (("d",), 0)], ("k",))
    assert _samples(reg) == {'g{k="a"}': "0.5", 'g{k="b"}': "3", 'g{k="c"}': "+Inf", 'g{k="d"}': "0"}
