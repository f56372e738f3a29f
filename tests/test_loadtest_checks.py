"""The run's verdict: completeness, exactly-once and rate checks over small fabricated runs,
including the inputs that must make a run fail."""
from loadtest.checks import Limit, bucket_breaks, judge

S1, S2 = "+15550001000", "+15550001001"


def _view(status, *path, reason=None):
    view = {"status": status, "timeline": [{"status": s} for s in ("accepted", *path, status)]}
    if reason:
        view["reason"] = reason
    return view


def _run(n=6, *, views=None, record=None, stats=None, limits=None, pair=Limit(0, 10, 45), unknown=0,
         allow_resubmits=False, tolerance_ms=0.0):
    ids = [f"id{i}" for i in range(n)]
    if views is None:
        views = {m: _view("delivered", "sent") for m in ids}
    if record is None:
        record = [{"id": m, "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + 100 * i}
                  for i, m in enumerate(ids)]
    if stats is None:
        stats = {"unique": len({r["id"] for r in record}), "duplicates": 0}
    if limits is None:
        limits = {S1: [Limit(-1e18, 60_000, 100)], S2: [Limit(-1e18, 60_000, 100)]}
    return judge(accepted=ids, views=views, record=record, netsim_stats=stats, sender_limits=limits,
                 pair_limit=pair, tolerance_ms=tolerance_ms, unknown_outcome_messages=unknown,
                 allow_resubmits=allow_resubmits)


def kinds(verdict):
    return {v.kind for v in verdict.violations}


def test_a_clean_run_passes_with_a_full_funnel():
    views = {f"id{i}": _view("read", "sent", "delivered") for i in range(4)}
    views["id4"] = _view("failed", "sent", reason="recipient_not_registered")
    views["id5"] = _view("delivered", "sent")
    v = _run(views=views)
    assert v.ok, v.violations
    assert (v.accepted, v.terminal, v.lost) == (6, 6, 0)
    assert v.funnel == {"accepted": 6, "sent": 6, "delivered": 5, "read": 4, "failed": 1}
    assert v.failed_reasons == {"recipient_not_registered": 1}


def test_an_accepted_id_stuck_before_a_terminal_status_is_lost():
    views = {f"id{i}": _view("delivered", "sent") for i in range(6)}
    views["id3"] = _view("sent")
    v = _run(views=views)
    assert kinds(v) == {"lost"} and v.lost == 1
    assert "id3" in v.violations[0].examples


def test_an_accepted_id_the_gateway_does_not_know_is_lost():
    views = {f"id{i}": _view("delivered", "sent") for i in range(5)}  # id5 answered 404
    views["id5"] = None
    v = _run(views=views)
    assert v.lost == 1 and "unknown to the gateway" in v.violations[0].message


def test_an_id_missing_from_netsims_record_fails():
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + i} for i in range(5)]
    v = _run(record=record)
    assert "missing_at_netsim" in kinds(v) and v.missing_at_netsim == 1


def test_an_id_recorded_twice_is_a_duplicate():
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + i} for i in range(6)]
    record.append(dict(record[2], at_ms=5000))
    v = _run(record=record, stats={"unique": 6, "duplicates": 0})
    assert "recorded_twice" in kinds(v) and v.recorded_twice == 1


def test_resubmits_fail_a_run_without_faults_but_not_one_with_them():
    stats = {"unique": 6, "duplicates": 3}
    assert "resubmitted" in kinds(_run(stats=stats))
    v = _run(stats=stats, allow_resubmits=True)
    assert v.ok and v.netsim_resubmits == 3 and any("dedupe" in n for n in v.notes)


def test_netsim_counting_more_than_its_record_fails():
    assert "record_incomplete" in kinds(_run(stats={"unique": 7, "duplicates": 0}))


def test_sends_nobody_saw_accepted_need_an_unknown_outcome_to_explain_them():
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + i} for i in range(6)]
    record.append({"id": "ghost", "sender": S1, "recipient": "+16669999999", "at_ms": 2000})
    stats = {"unique": 7, "duplicates": 0}
    assert "unexplained_sends" in kinds(_run(record=record, stats=stats))
    assert _run(record=record, stats=stats, unknown=1).ok


def test_a_sender_past_its_bucket_is_caught():
    # 5 per minute, burst 2: two at once are fine, a third 1 s later is not (a token takes 12 s)
    limits = {S1: [Limit(-1e18, 5, 2)]}
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": t}
              for i, t in enumerate([0, 0, 1000, 13_000, 25_000, 37_000])]
    v = _run(record=record, limits=limits)
    assert kinds(v) == {"sender_rate"} and v.sender_rate_breaks == 1
    assert v.violations[0].examples[0]["sender"] == S1


def test_a_sender_exactly_at_its_bucket_passes():
    limits = {S1: [Limit(-1e18, 5, 2)]}
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": t}
              for i, t in enumerate([0, 0, 12_000, 24_000, 36_000, 48_000])]
    assert _run(record=record, limits=limits).ok


def test_a_sender_dropped_mid_run_is_held_to_the_new_limit_from_then_on():
    fast_then_slow = [Limit(-1e18, 6000, 10), Limit(10_000, 5, 5)]
    before = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 100 * i} for i in range(6)]
    ok = before + [{"id": f"x{i}", "sender": S1, "recipient": f"+1777{i:07d}", "at_ms": 10_000 + 12_000 * i}
                   for i in range(6)]
    bad = before + [{"id": f"x{i}", "sender": S1, "recipient": f"+1777{i:07d}", "at_ms": 10_000 + 1_000 * i}
                    for i in range(8)]
    assert bucket_breaks([r["at_ms"] for r in ok], fast_then_slow) == []
    assert len(bucket_breaks([r["at_ms"] for r in bad], fast_then_slow)) >= 2


def test_tolerance_forgives_jitter_but_not_a_real_excess():
    limit = [Limit(-1e18, 60, 1)]  # one per second
    jittered = [0, 950, 1950, 2900]
    assert bucket_breaks(jittered, limit) != []
    assert bucket_breaks(jittered, limit, tolerance_ms=100) == []
    assert bucket_breaks([0, 100, 200, 300], limit, tolerance_ms=100) != []


def test_a_sender_without_a_known_limit_is_reported():
    record = [{"id": f"id{i}", "sender": S2 if i == 0 else S1, "recipient": f"+1666{i:07d}", "at_ms": i}
              for i in range(6)]
    assert "unknown_sender" in kinds(_run(record=record, limits={S1: [Limit(-1e18, 60_000, 100)]}))


def test_more_than_the_pair_burst_to_one_recipient_at_once_breaks_the_pair_limit():
    n = 47
    record = [{"id": f"id{i}", "sender": S1, "recipient": "+16660000001", "at_ms": 1000 + i} for i in range(n)]
    views = {f"id{i}": _view("delivered", "sent") for i in range(n)}
    v = _run(n=n, views=views, record=record)
    assert kinds(v) == {"pair_rate"} and v.pair_rate_breaks == 2
    # the same 47 spread one per 6 s after the burst of 45 are fine
    spaced = [dict(r, at_ms=1000 + i if i < 45 else 1000 + 6000 * (i - 44)) for i, r in enumerate(record)]
    assert _run(n=n, views=views, record=spaced).ok


def test_without_a_netsim_record_the_netsim_checks_are_named_as_skipped():
    ids = ["a", "b"]
    v = judge(accepted=ids, views={m: _view("read", "sent", "delivered") for m in ids}, record=None,
              netsim_stats=None, sender_limits=None, pair_limit=None, tolerance_ms=0,
              unknown_outcome_messages=0, allow_resubmits=False)
    assert v.ok and any("skipped" in n for n in v.notes)


def test_the_busiest_second_is_counted_for_the_report():
    from loadtest.checks import max_in_window
    assert max_in_window([0, 10, 20, 999, 1000, 1500, 3000]) == 4
    assert max_in_window([]) == 0


def test_a_break_says_how_much_too_early_the_send_came():
    [(index, at_ms, early_ms)] = bucket_breaks([0, 100], [Limit(-1e18, 60, 1)])
    assert (index, at_ms) == (1, 100) and abs(early_ms - 900) < 1e-6


def _steps(*rows):
    return [{"step": i, "warmup": w, "offered_rps": r, "offered_msgs_per_s": r, "passed": ok}
            for i, (w, r, ok) in enumerate(rows)]


def test_peak_is_the_highest_judged_step_that_held_and_warm_up_steps_do_not_count():
    from loadtest.runner import peak_section
    from loadtest.scenario import parse_scenario
    scn = parse_scenario('name = "p"\n[load]\nprofile = "step"\nstep_rates = [1]\n[checks]\nmin_sustainable_rps = 500\n')
    verdict = judge(accepted=[], views={}, record=None, netsim_stats=None, sender_limits=None, pair_limit=None,
                    tolerance_ms=0, unknown_outcome_messages=0, allow_resubmits=False)
    peak = peak_section(scn, _steps((True, 500, False), (False, 500, True), (False, 1000, True),
                                    (False, 2000, False)), verdict)
    assert peak["sustainable_rps"] == 1000 and peak["stopped_by"]["offered_rps"] == 2000
    assert verdict.ok
    low = peak_section(scn, _steps((True, 9000, True), (False, 400, True), (False, 800, False)), verdict)
    assert low["sustainable_rps"] == 400
    assert [v.kind for v in verdict.violations] == ["peak_below_floor"]


# -- end-to-end encryption: decrypted, intact, and the customers' side read --------------------------

from loadtest.checks import judge_e2e  # noqa: E402
from loadtest.netsim.core import text_digest  # noqa: E402
from loadtest.workload import message_text  # noqa: E402


def _e2e(n=4, *, record=None, stats=None, views=None, inbound_expected=0, gateway_inbound=None):
    ids = [f"id{i}" for i in range(n)]
    if record is None:
        record = [{"id": m, "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + 100 * i,
                   "digest": text_digest(message_text(i))} for i, m in enumerate(ids)]
    base = {"unique": len(record), "duplicates": 0, "decrypted": len(record), "decrypt_failures": 0}
    stats = base | (stats or {})
    v = _run(n, views=views, record=record, stats=stats)
    judge_e2e(v, record=record, netsim_stats=stats, expected_digests={m: text_digest(message_text(i))
                                                                      for i, m in enumerate(ids)},
              inbound_expected=inbound_expected, gateway_inbound=gateway_inbound)
    return v


def test_every_message_decrypted_and_intact_passes():
    v = _e2e()
    assert v.ok, v.violations
    assert (v.decrypted, v.decrypt_failures, v.plaintext_checked, v.plaintext_mismatches) == (4, 0, 4, 0)


def test_a_decryption_failure_at_netsim_fails_the_run():
    views = {f"id{i}": _view("delivered", "sent") for i in range(4)}
    views["id2"] = _view("failed", "sent", reason="undecryptable_bad_tag")
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + 100 * i,
               **({} if i == 2 else {"digest": text_digest(message_text(i))})} for i in range(4)]
    v = _e2e(record=record, views=views, stats={"decrypted": 3, "decrypt_failures": 1,
                                                "decrypt_failure_reasons": {"bad_tag": 1}})
    assert kinds(v) == {"failed_undecryptable", "decrypt_failures", "plaintext_mismatch"}
    assert v.plaintext_mismatches == 1 and v.violations[-1].examples == ["id2"]


def test_a_message_that_arrived_with_other_text_fails_the_run():
    record = [{"id": f"id{i}", "sender": S1, "recipient": f"+1666{i:07d}", "at_ms": 1000 + 100 * i,
               "digest": text_digest(message_text(i ^ 1))} for i in range(4)]  # texts of 0/1 and 2/3 swapped
    v = _e2e(record=record)
    assert kinds(v) == {"plaintext_mismatch"} and v.plaintext_mismatches == 4


def test_without_decryption_at_netsim_the_checks_are_named_as_skipped():
    v = _run(4)
    judge_e2e(v, record=None, netsim_stats={"unique": 4}, expected_digests={}, inbound_expected=0,
              gateway_inbound=None)
    assert v.ok and v.decrypted is None
    assert any("encryption checks skipped" in n for n in v.notes)


def test_customers_messages_all_read_by_the_gateway_pass():
    v = _e2e(stats={"inbound_sent": 50, "inbound_skipped": 0, "inbound_unacked": 0}, inbound_expected=50,
             gateway_inbound={"received": 50.0, "duplicate": 3.0})
    assert v.ok, v.violations
    assert v.inbound["received"] == 50 and v.inbound["duplicate"] == 3


def test_customers_messages_unread_unacked_or_never_sent_fail_the_run():
    v = _e2e(stats={"inbound_sent": 48, "inbound_skipped": 2, "inbound_unacked": 1}, inbound_expected=50,
             gateway_inbound={"received": 46.0, "undecryptable": 1.0})
    assert kinds(v) == {"inbound_not_sent", "inbound_unacked", "inbound_undecryptable", "inbound_count"}


def test_without_the_gateways_counters_inbound_completeness_is_named_as_unchecked():
    v = _e2e(stats={"inbound_sent": 5, "inbound_skipped": 0, "inbound_unacked": 0}, inbound_expected=5,
             gateway_inbound=None)
    assert v.ok and any("inbound completeness unchecked" in n for n in v.notes)
