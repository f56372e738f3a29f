"""bench.inbound_keys, bench.fixed_rate, bench.reload_senders and bench.policy_swap_live run a real
gateway (and netsim) and report what they name (short runs: the figures themselves are for bench/RESULTS.md, not for
tests)."""
from bench import fixed_rate, inbound_keys, policy_swap_live, reload_senders


def test_inbound_keys_reports_new_customers_key_file_writes_and_the_loops_answers():
    r = inbound_keys.run(rate=50.0, seconds=1.5, pool=20)
    assert r["inbound_per_s"] > 10  # new customers' messages were read
    assert r["key_file_writes_per_s"] > 0  # their prekeys used, refills made: files written
    assert r["io_answer"]["samples"] > 100 and r["io_answer"]["max_ms"] > 0


def test_fixed_rate_reports_cpu_commits_and_steps_per_message():
    (row,) = fixed_rate.run([40.0], seconds=1.0)
    assert row["errors"] == 0 and row["sends_per_s"] > 20
    assert row["cpu_us_per_message"] > 0 and row["commits_per_s"] > 0 and row["task_steps_per_message"] > 1


def test_reload_senders_reports_the_reload_and_the_loops_answers():
    r = reload_senders.run(senders=3)
    assert r["reload_status"] == 200 and r["reload_s"] > 0
    assert r["io_answer"]["samples"] > 100


def test_policy_swap_live_reports_the_probes_and_what_the_gateway_counted_inside(capsys):
    r = policy_swap_live.run(big_terms=2_000, baseline_s=0.5, rate=100.0)
    assert r["next_send_obeys_new_list"] and r["send_errors"] == 0
    assert r["io_answer"]["during_put"]["samples"] > 50
    for window in ("baseline", "during_put"):
        inside = r["inside_over_5ms"][window]
        assert inside["batches"] >= 0 and all(n > 0 for n in inside["steps"].values())
    policy_swap_live.print_table(r)
    assert "inside the gateway, during put" in capsys.readouterr().out
