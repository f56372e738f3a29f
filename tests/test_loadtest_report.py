"""Scenario files, workload encoding, latency figures and the report folder, from small fabricated inputs."""
from array import array
from pathlib import Path

import orjson
import pytest

from loadtest import latency as L
from loadtest.checks import judge
from loadtest.progress import progress_line, summary_table
from loadtest.report import render_markdown, write_report
from loadtest.runner import (commits_from_metrics, counter_rate, cpu_share, loop_from_metrics, loop_shares, loop_stalls,
                             mean_commit_ms, parse_metrics)
from loadtest.scenario import ScenarioError, load_scenario, parse_scenario
from loadtest.workload import (Workload, ids_from_answers, inbound_customers, message_numbers, message_text,
                               sender_tiers)

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "loadtest" / "scenarios").glob("*.toml"))

BASE = """
name = "t"
[load]
rate = 100
duration_s = 10
[quick.load]
rate = 10
duration_s = 2
"""


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_scenario_parses_in_both_variants(path, quick):
    scn = parse_scenario(path.read_text(), quick=quick, source=str(path))
    assert scn.name == path.stem and scn.schedule().total > 0


def test_the_quick_table_overrides_only_what_it_names():
    full, quick = parse_scenario(BASE), parse_scenario(BASE, quick=True)
    assert (full.load.rate, quick.load.rate) == (100, 10)
    assert quick.load.connections == full.load.connections and quick.quick and not full.quick


def test_a_typo_in_a_scenario_names_its_path():
    with pytest.raises(ScenarioError, match=r"unknown field `rat`.*\$\.load"):
        parse_scenario(BASE.replace("rate = 100", "rat = 100"))


def test_a_scenario_file_nested_too_deeply_or_not_utf8_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError, match="nested too deeply"):
        parse_scenario(BASE + "x = " + "[" * 5000 + "\n")
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b'description = "caf\xe9"\n')
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(str(path))


def test_senders_on_an_undefined_tier_are_refused():
    with pytest.raises(ScenarioError, match="not defined in gateway.tiers"):
        parse_scenario(BASE + '[senders]\ntiers = { gold = 1.0 }\n')


def test_tier_shares_split_the_sender_numbers():
    scn = parse_scenario(BASE + '[senders]\ncount = 10\ntiers = { fast = 0.25, restricted = 0.75 }\n')
    tiers = sender_tiers(scn)
    assert len(tiers) == 10 and tiers.count("restricted") in (7, 8)


def test_a_single_request_is_complete_http_with_a_json_body():
    scn = parse_scenario(BASE)
    raw = Workload(scn, host="127.0.0.1", port=8080, api_key="k").request(7)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/messages HTTP/1.1\r\n") and b"Authorization: Bearer k" in head
    assert int(head.split(b"Content-Length: ")[1]) == len(body)
    doc = orjson.loads(body)
    assert doc["to"] == "+16660000007" and "from" not in doc  # one sender: the workspace default


def test_with_many_senders_each_message_names_its_sender():
    scn = parse_scenario(BASE + '[senders]\ncount = 3\n')
    work = Workload(scn, host="h", port=1, api_key="k")
    senders = [orjson.loads(work.request(k).split(b"\r\n\r\n", 1)[1])["from"] for k in range(4)]
    assert senders == ["+15550001000", "+15550001001", "+15550001002", "+15550001000"]


def test_a_batch_request_carries_batch_size_consecutive_messages():
    scn = parse_scenario(BASE.replace("duration_s = 10", 'duration_s = 10\nsend = "batch"\nbatch_size = 3'))
    raw = Workload(scn, host="h", port=1, api_key="k").request(2)
    doc = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert [m["to"] for m in doc["messages"]] == ["+16660000006", "+16660000007", "+16660000008"]


def test_ids_come_out_of_single_and_batch_answers():
    single = (0, b"202", b'{"id":"01KAAAAAAAAAAAAAAAAAAAAAAA","status":"accepted"}')
    batch = (1, b"202", orjson.dumps({"accepted": 1, "rejected": 1, "results": [
        {"index": 0, "id": "01KBBBBBBBBBBBBBBBBBBBBBBB", "status": "accepted"},
        {"index": 1, "error": {"code": "invalid_field"}}]}))
    ids, rejected = ids_from_answers([single, batch])
    assert ids == ["01KAAAAAAAAAAAAAAAAAAAAAAA", "01KBBBBBBBBBBBBBBBBBBBBBBB"] and rejected == 1


def test_each_accepted_id_maps_back_to_the_message_number_and_text_it_carried():
    single = (4, b"202", b'{"id":"01KAAAAAAAAAAAAAAAAAAAAAAA","status":"accepted"}')
    assert message_numbers([single], 1) == {"01KAAAAAAAAAAAAAAAAAAAAAAA": 4}
    batch = (2, b"202", orjson.dumps({"results": [
        {"index": 0, "error": {"code": "invalid_field"}},
        {"index": 1, "id": "01KBBBBBBBBBBBBBBBBBBBBBBB", "status": "accepted"}]}))
    assert message_numbers([batch], 3) == {"01KBBBBBBBBBBBBBBBBBBBBBBB": 7}
    scn = parse_scenario(BASE)
    doc = orjson.loads(Workload(scn, host="h", port=1, api_key="k").request(4).split(b"\r\n\r\n", 1)[1])
    assert doc["text"]["body"] == message_text(4)


def test_inbound_traffic_comes_from_own_customers_or_from_the_loads_recipients():
    scn = parse_scenario(BASE + "[netsim]\ninbound_rate = 5\n[senders]\nrecipients = 300\n")
    assert inbound_customers(scn) == ("+1888", 1000, 50)  # 5/s over the 10 s load
    scn = parse_scenario(BASE + '[netsim]\ninbound_rate = 5\ninbound_from = "recipients"\n'
                                "[senders]\nrecipients = 300\n")
    prefix, pool, count = inbound_customers(scn)
    assert (prefix, pool, count) == ("+1666", 300, 50)
    work = Workload(scn, host="h", port=1, api_key="k")
    assert {work.message(n)[1] for n in range(300)} == {"%s%07d" % (prefix, k) for k in range(pool)}
    assert inbound_customers(parse_scenario(BASE))[2] == 0


def test_latency_summary_reads_percentiles_off_an_hdr_histogram():
    samples = array("q", range(1000, 101_000, 1000))  # 1 .. 100 ms
    s = L.summary(L.histogram(samples))
    assert s["count"] == 100
    assert s["p50"] == pytest.approx(50, rel=0.01) and s["p99"] == pytest.approx(99, rel=0.01)
    assert s["max"] == pytest.approx(100, rel=0.01)
    rows = L.per_second([array("q"), samples])
    assert [r["second"] for r in rows] == [1]


def _report(violating: bool) -> dict:
    ids = ["a", "b"]
    views = {"a": {"status": "read", "timeline": [{"status": "sent"}, {"status": "delivered"}]},
             "b": {"status": "failed", "reason": "recipient_not_registered", "timeline": [{"status": "sent"}]}}
    if violating:
        views["b"] = {"status": "sent", "timeline": []}
    verdict = judge(accepted=ids, views=views, record=None, netsim_stats=None, sender_limits=None,
                    pair_limit=None, tolerance_ms=0, unknown_outcome_messages=0, allow_resubmits=False)
    per_second = [{"second": s, "offered": 10, "answered": 10, "ok": 10, "errors": 0, "messages_ok": 10,
                   "p50": 1.0, "p90": 2.0, "p99": 3.0, "p99_9": 4.0, "max": 5.0} for s in range(3)]
    import msgspec
    return {"scenario": "fabricated", "quick": True, "ok": verdict.ok, "command": "python -m loadtest run x",
            "generator_ceiling": {"requests_per_s": 20000, "messages_per_s": 20000, "request_shape": "single",
                                  "connections": 8, "generator_cpu_pct": 90, "requests_per_cpu_s": 22000},
            "load": {"messages_per_request": 1, "issued_requests": 30, "answered": 30, "duration_s": 3.0,
                     "requests_per_s": 10.0, "accepted_messages": 2, "accepted_messages_per_s": 0.7,
                     "statuses": {"202": 30}, "failures": {"refused": 0},
                     "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p99_9": 4.0, "max": 5.0},
                     "per_second": per_second},
            "verdict": msgspec.to_builtins(verdict), "drain": {"seconds": 1.0},
            "gateway_counters": [{"t": t, "accepted": 10 * t, "sent": 9 * t, "delivered": 8 * t, "read": 4 * t,
                                  "failed": 0} for t in (1.0, 2.0, 3.0)]}


def test_a_report_folder_holds_json_markdown_and_the_three_plots(tmp_path):
    written = write_report(str(tmp_path), _report(violating=False))
    assert set(written) == {"report.json", "report.md", "throughput.png", "latency.png", "funnel.png"}
    for name in ("throughput.png", "latency.png", "funnel.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert orjson.loads((tmp_path / "report.json").read_bytes())["scenario"] == "fabricated"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# fabricated (quick): PASS") and "recipient_not_registered 1" in md
    assert "![funnel.png](funnel.png)" in md


def test_a_failing_report_says_what_was_violated(tmp_path):
    write_report(str(tmp_path), _report(violating=True))
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# fabricated (quick): FAIL")
    assert "### VIOLATIONS" in md and "**lost**" in md


def test_progress_and_summary_text():
    line = progress_line(elapsed_s=3.0, offered_rps=500, done_rps=498, p99_ms=12.5, in_flight=3, errors=0,
                         funnel={"accepted": 10, "sent": 9, "delivered": 8, "read": 4, "failed": 1})
    assert "p99    12.5 ms" in line and "delivered 8" in line
    table = summary_table([("a", "1"), ("longer", "2")])
    assert "a       1" in table and "longer  2" in table


def test_hot_recipients_get_every_nth_message_from_the_first_sender():
    scn = parse_scenario(BASE + '[senders]\ncount = 2\nhot_recipients = 2\nhot_every = 3\n')
    work = Workload(scn, host="h", port=1, api_key="k")
    pairs = [work.message(n) for n in range(7)]
    assert pairs[0] == ("+15550001000", "+16670000000") and pairs[3] == ("+15550001000", "+16670000001")
    assert pairs[6] == ("+15550001000", "+16670000000") and pairs[1] == ("+15550001001", "+16660000001")
    with pytest.raises(ScenarioError, match="go together"):
        parse_scenario(BASE + '[senders]\nhot_recipients = 2\n')


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_rewrites_one_line_on_a_terminal_and_prints_every_few_seconds_otherwise():
    from loadtest.progress import Progress
    tty, plain = _Stream(True), _Stream(False)
    p_tty, p_plain = Progress(tty), Progress(plain, every_s_plain=5.0)
    for t in (0.0, 1.0, 2.0, 5.5):
        p_tty.show(f"line {t}", t)
        p_plain.show(f"line {t}", t)
    p_tty.say("done")
    assert tty.text.count("\r") == 4 and "\n" not in tty.text.split("done")[0].rstrip("\n")
    assert plain.text.splitlines() == ["line 0.0", "line 5.5"]


def test_a_steps_cpu_share_needs_both_ends_read_from_one_gateway_process():
    samples = {0: (11, 1.0), 5: (11, 5.5), 10: (12, 0.5), 15: (12, 4.0), 20: None}
    assert cpu_share(samples, 0, 5) == 90.0
    assert cpu_share(samples, 10, 15) == 70.0
    assert cpu_share(samples, 5, 10) is None  # restarted in between: another process's clock
    assert cpu_share(samples, 15, 20) is None  # unreadable at one end
    assert cpu_share(samples, 20, 25) is None  # never sampled


def test_the_step_table_shows_each_steps_gateway_cpu_share():
    steps = [{"step": 0, "warmup": True, "offered_rps": 500, "answered_rps": 499.8, "p99_ms": 3.2, "errors": 0,
              "unanswered": 0, "passed": True, "gateway_cpu_pct": 31.4, "sent_per_s": 498.0,
              "commits_per_s": 210.0, "commit_ms": 1.27},
             {"step": 1, "warmup": False, "offered_rps": 8000, "answered_rps": 7402.8, "p99_ms": 396.3,
              "errors": 0, "unanswered": 12, "passed": False, "gateway_cpu_pct": 99.6, "sent_per_s": 5400.5,
              "commits_per_s": 38.5, "commit_ms": 14.08, "loop_stalls": 1350},
             {"step": 2, "warmup": False, "offered_rps": 9000, "answered_rps": 1.0, "p99_ms": None, "errors": 0,
              "unanswered": 0, "passed": False}]  # a report from a run against --target: no CPU figure
    text = render_markdown({"scenario": "peak-ramp", "ok": True, "peak": {
        "sustainable_rps": 500, "sustainable_msgs_per_s": 500, "p99_limit_ms": 100, "steps": steps}}, [])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "offered" not in line]
    assert "| gateway CPU % | sent msg/s | commits/s | commit ms (mean) |" in text
    assert rows[-3:] == ["| 0 | 500 | 499.8 | 3.2 | 0 | 0 | 31.4 | 498.0 | 210.0 | 1.3 | - | warm-up |",
                         "| 1 | 8,000 | 7,402.8 | 396.3 | 0 | 12 | 99.6 | 5,400.5 | 38.5 | 14.1 | 1,350 | NO |",
                         "| 2 | 9,000 | 1.0 | - | 0 | 0 | - | - | - | - | - | NO |"]


def test_a_steps_send_rate_comes_from_the_counters_sampled_inside_it():
    series = [{"t": 4.02, "sent": 100.0}, {"t": 5.01, "sent": 600.0}, {"t": 6.03, "sent": 1_100.0},
              {"t": 10.04, "sent": 3_100.0}, {"t": 11.0, "sent": 10.0}]  # restarted after 10 s
    assert counter_rate(series, "sent", 5, 10) == 497.0  # 2,500 sent between t=5.01 and t=10.04
    assert counter_rate(series, "sent", 10, 15) is None  # the counter went back: a restart
    assert counter_rate(series, "sent", 20, 25) is None  # no samples
    assert counter_rate([{"t": 5.0, "sent": 1.0}], "sent", 5, 10) is None  # one sample only


def test_a_steps_mean_commit_time_comes_from_the_commit_histograms_sum_and_count():
    text = ("# HELP gateway_store_commit_seconds Group commits\n"
            'gateway_store_commit_seconds_bucket{le="0.001"} 90\n'
            "gateway_store_commit_seconds_sum 0.250000\n"
            "gateway_store_commit_seconds_count 100\n")
    assert commits_from_metrics(parse_metrics(text)) == {"commits": 100.0, "commit_s": 0.25}
    assert commits_from_metrics({}) == {"commits": 0.0, "commit_s": 0.0}  # a gateway without the histogram
    series = [{"t": 5.0, "commits": 100.0, "commit_s": 0.25}, {"t": 7.5, "commits": 150.0, "commit_s": 0.5},
              {"t": 10.0, "commits": 200.0, "commit_s": 1.25}, {"t": 12.0, "commits": 200.0, "commit_s": 1.25}]
    assert mean_commit_ms(series, 5, 10) == 10.0  # 1.0 s over 100 commits
    assert mean_commit_ms(series, 10, 12) is None  # no commit in the step


def test_a_mean_commit_time_of_about_a_millisecond_is_not_rounded_away():
    series = [{"t": 0.0, "commits": 0.0, "commit_s": 0.0}, {"t": 1.0, "commits": 50.0, "commit_s": 0.048}]
    assert mean_commit_ms(series, 0, 1) == 0.96  # 0.048 s of commits in 1 s: a rate under 0.1
    assert mean_commit_ms(series, 20, 25) is None  # no samples


def test_a_steps_event_loop_shares_come_from_the_loop_counters():
    text = ("# TYPE gateway_loop_busy_seconds_total counter\n"
            'gateway_loop_busy_seconds_total{task="http"} 10.5\n'
            'gateway_loop_busy_seconds_total{task="store"} 4.25\n'
            "gateway_loop_idle_seconds_total 30\n")
    assert loop_from_metrics(parse_metrics(text)) == {"loop:http": 10.5, "loop:store": 4.25, "loop:idle": 30.0}
    stalls = text + 'gateway_loop_long_batches_total{over="5ms"} 9\ngateway_loop_long_batches_total{over="10ms"} 4\n'
    assert loop_from_metrics(parse_metrics(stalls))["stalls"] == 4.0
    assert loop_stalls([{"t": 5.0, "stalls": 1.0}, {"t": 7.5, "stalls": 2.0}, {"t": 10.0, "stalls": 4.0}], 5, 10) == 3
    assert loop_stalls([{"t": 5.0}], 5, 10) is None  # a gateway without the counter
    assert loop_from_metrics({}) == {}  # a gateway without them
    series = [{"t": 5.0, "loop:http": 1.0, "loop:idle": 2.0},  # "store" not seen yet in the first sample
              {"t": 6.0, "loop:http": 1.4, "loop:store": 0.1, "loop:idle": 2.5, "loop:app": 0.0},
              {"t": 10.0, "loop:http": 3.0, "loop:store": 0.9, "loop:idle": 4.5, "loop:app": 0.001}]
    assert loop_shares(series, 5, 10) == {"http": 40.0, "store": 20.0, "idle": 50.0}  # app: under 0.5 %
    series[-1]["loop:http"] = 1.3615  # shares to a tenth of a percent, not rounded to the rate's tenths
    assert loop_shares(series, 5, 10)["http"] == 7.2
    assert loop_shares(series, 20, 25) == {}


def test_the_report_shows_where_the_event_loop_spent_each_step():
    steps = [{"step": 0, "warmup": False, "offered_rps": 500, "answered_rps": 500.0, "p99_ms": 3.0, "errors": 0,
              "unanswered": 0, "passed": True, "loop_pct": {"http": 20.0, "store": 10.0, "idle": 60.0}},
             {"step": 1, "warmup": False, "offered_rps": 9000, "answered_rps": 8000.0, "p99_ms": 150.0, "errors": 0,
              "unanswered": 0, "passed": False, "loop_pct": {"http": 35.0, "delivery": 25.0, "store": 30.0,
                                                                  "idle": 1.0}}]
    text = render_markdown({"scenario": "peak-ramp", "ok": True, "peak": {
        "sustainable_rps": 500, "sustainable_msgs_per_s": 500, "p99_limit_ms": 100, "steps": steps}}, [])
    assert "| step | http | store | delivery | idle |" in text
    assert "| 0 | 20.0 | 10.0 | - | 60.0 |" in text and "| 1 | 35.0 | 30.0 | 25.0 | 1.0 |" in text
    no_loop = render_markdown({"scenario": "peak-ramp", "ok": True, "peak": {
        "sustainable_rps": 500, "sustainable_msgs_per_s": 500, "p99_limit_ms": 100,
        "steps": [{k: v for k, v in steps[0].items() if k != "loop_pct"}]}}, [])
    assert "event loop spent" not in no_loop


def test_the_report_says_why_the_ramp_stopped_and_what_limited_it():
    from loadtest.report import stop_reason

    saturated = {"step": 14, "warmup": False, "offered_rps": 7000.0, "offered_msgs_per_s": 7000.0, "answered_rps": 7008.6,
                 "p99_ms": 128.454, "errors": 0, "unanswered": 0, "passed": False, "gateway_cpu_pct": 90.6,
                 "sent_per_s": 6600.5, "commits_per_s": 60.6, "commit_ms": 9.76}
    assert stop_reason(saturated, 100.0, 20_897) == ("stopped at 7,000 req/s: p99 128.5 ms > 100 ms; gateway CPU "
                                                     "90.6 % (its core saturated); commits of 9.8 ms")
    idle_but_slow = dict(saturated, gateway_cpu_pct=45.0, sent_per_s=3000.0, errors=3, unanswered=12, loop_stalls=1200)
    assert stop_reason(idle_but_slow, 100.0, 8000) == (
        "stopped at 7,000 req/s: p99 128.5 ms > 100 ms, 3 errors, 12 unanswered; gateway CPU 45 %; commits of "
        "9.8 ms; 1,200 event-loop stalls over 10 ms; delivery behind (3,000 msg/s sent); near the generator's own "
        "ceiling (8,000 req/s)")
    against_target = {"step": 3, "offered_rps": 9000, "p99_ms": None, "errors": 0, "unanswered": 9000}
    assert stop_reason(against_target, 100.0) == "stopped at 9,000 req/s: no answers, 9,000 unanswered"
    assert stop_reason(None, 100.0) is None  # every step held
    text = render_markdown({"scenario": "peak-ramp", "ok": True,
                            "peak": {"sustainable_rps": 6000, "sustainable_msgs_per_s": 6000, "p99_limit_ms": 100,
                                     "steps": [saturated], "stopped_by": saturated}}, [])
    assert "The ramp stopped at 7,000 req/s: p99 128.5 ms > 100 ms; gateway CPU 90.6 % (its core saturated)" in text
