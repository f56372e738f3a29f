"""The pair limits' journal (gateway/store/pairlog.py): the pure core, its store operations and the
delivery shell's restart and compaction against a real store, and a real gateway process keeping a
pair's limit across compactions and a kill -9."""
import time

import lmdb
import pytest
import trio

from gateway.app import Gateway as InprocGateway
from gateway.config import ConfigError, parse_config
from gateway.store import ops
from gateway.store import pairlog
from gateway.store import records as R
from gateway.store.pairlog import PairLog
from tests.harness import Gateway
from tests.inproc import CONFIG, with_gateway

A = ("+15550000001", "+14155550100")
B = ("+15550000001", "+14155550101")
C = ("+15550000001", "+14155550102")


# -- the pure core ----------------------------------------------------------------------------


def test_records_are_numbered_in_order_and_remember_their_pairs():
    log = PairLog(compact_entries=10)
    first = log.records([(*A, (3.0, 10.0)), (*B, (4.0, 11.0))])
    second = log.records([(*A, (2.0, 12.0))])
    assert [pairlog.decode(k, v) for k, v in first + second] == [
        (1, *A, 3.0, 10.0), (2, *B, 4.0, 11.0), (3, *A, 2.0, 12.0)]
    assert sorted(k for k, _ in first + second) == [k for k, _ in first + second]
    assert log.table == "pairlog_a" and log.entries == [3, 0] and log.touched[0] == {A, B}


def test_replay_merges_both_tables_in_record_order_and_goes_on_after_the_newest():
    a = [pairlog.encode(1, *A, 1.0, 1.0), pairlog.encode(2, *B, 2.0, 2.0), pairlog.encode(5, *A, 5.0, 5.0)]
    b = [pairlog.encode(3, *A, 3.0, 3.0), pairlog.encode(4, *C, 4.0, 4.0)]
    log = PairLog()
    assert log.replay((a, b)) == {A: (5.0, 5.0), B: (2.0, 2.0), C: (4.0, 4.0)}
    assert (log.cur, log.seq, log.entries) == (0, 5, [3, 2])
    assert log.touched == [{A, B}, {A, C}]
    assert pairlog.decode(*log.records([(*B, (6.0, 6.0))])[0])[0] == 6


def test_replay_of_nothing_starts_at_the_first_table():
    log = PairLog()
    assert log.replay(([], [])) == {}
    assert (log.cur, log.seq, log.due()) == (0, 0, False)


def test_compaction_switches_tables_copies_tracked_pairs_and_forgets_the_old_table():
    log = PairLog(compact_entries=3)
    log.records([(*A, (1.0, 1.0)), (*B, (1.0, 1.0))])
    assert not log.due()
    log.records([(*C, (1.0, 1.0))])
    assert log.due()
    old, pairs = log.start_compaction()
    assert (old, log.table, sorted(pairs)) == (0, "pairlog_b", [A, B, C])
    log.records([(*A, (0.0, 2.0))])  # a dispatch round between two compaction steps
    states = {A: (0.5, 3.0), B: (7.0, 3.0)}  # C is full again: the scheduler no longer tracks it
    copies = log.copies(sorted(pairs), lambda s, r: states.get((s, r)))
    assert [pairlog.decode(k, v)[1:] for k, v in copies] == [(*A, 0.5, 3.0), (*B, 7.0, 3.0)]
    assert log.due()  # the old table still holds records until its drop committed
    log.dropped(old)
    assert log.entries == [0, 3] and log.touched[0] == set() and not log.due()
    log.records([(*A, (0.0, 4.0))] * 2)
    assert not log.due()  # 5 records: the table is due at twice the 3 the compaction left
    log.records([(*A, (0.0, 5.0))])
    assert log.due()


def test_a_compaction_cut_short_goes_on_without_switching():
    log = PairLog(compact_entries=100)
    log.replay(([pairlog.encode(1, *A, 1.0, 1.0)], [pairlog.encode(2, *B, 2.0, 2.0)]))
    assert log.cur == 1 and log.due()
    old, pairs = log.start_compaction()
    assert (old, log.cur, pairs) == (0, 1, [A])


def test_the_config_refuses_a_journal_that_never_compacts():
    with pytest.raises(ConfigError, match=r"store\.pair_log_compact_entries"):
        parse_config("[store]\npair_log_compact_entries = 0\n")


# -- store operations and the delivery shell, in process ----------------------------------------


def _dispatch(gw, states):
    return gw.writer.write(ops.dispatch, ops.DispatchArg([], [], [], pairs=states, pair_log=gw.delivery.pair_log))


def _restarted(tmp_path, store_extra=""):
    gw = InprocGateway(parse_config(CONFIG.format(data_dir=tmp_path, store_extra=store_extra)))
    gw.delivery.rebuild()
    return gw


async def test_dispatch_rounds_append_and_a_restart_restores_each_pairs_latest_state(tmp_path):
    async def body(gw, link):
        await _dispatch(gw, [(*A, (3.0, 10.0)), (*B, (4.0, 10.0))])
        await _dispatch(gw, [(*A, (2.0, 11.0))])
        assert [pairlog.decode(k, v)[0] for k, v in gw.store.scan("pairlog_a")] == [1, 2, 3]

    await with_gateway(tmp_path, body)
    gw = _restarted(tmp_path)
    try:
        assert gw.scheduler.pair_state(*A) == (2.0, 11.0) and gw.scheduler.pair_state(*B) == (4.0, 10.0)
        assert gw.delivery.pair_log.seq == 3
    finally:
        gw.close()


async def test_states_stored_ahead_of_the_present_are_restored_as_of_now(tmp_path):
    """The system clock was set back an hour between two runs: the buckets refill from now on,
    instead of nothing for an hour (their stored `last` is an hour ahead)."""
    ahead = time.time() + 3600

    async def body(gw, link):
        await _dispatch(gw, [(*A, (0.0, ahead))])
        await gw.writer.write(ops.dispatch, ops.DispatchArg([], [], [(R.limiter_sender_key(A[0]), (0.0, ahead))]))

    await with_gateway(tmp_path, body)
    gw = _restarted(tmp_path)
    try:
        now = gw.clock.steady()
        (pair_tokens, pair_last), (sender_tokens, sender_last) = gw.scheduler.pair_state(*A), gw.scheduler.sender_state(A[0])
        assert pair_tokens == sender_tokens == 0.0 and now - 5 < pair_last <= now and now - 5 < sender_last <= now
    finally:
        gw.close()


async def test_compaction_keeps_the_live_pairs_and_empties_the_old_table(tmp_path):
    async def body(gw, link):
        sched = gw.scheduler
        sched.restore_pair(*A, 1.0, 20.0)
        sched.restore_pair(*B, 2.0, 20.0)
        await _dispatch(gw, [(*A, (1.0, 20.0)), (*B, (2.0, 20.0)), (*C, (3.0, 20.0))])  # C: not tracked
        await gw.delivery.compact_pair_log()
        assert gw.store.count("pairlog_a") == 0
        assert {pairlog.decode(k, v)[1:] for k, v in gw.store.scan("pairlog_b")} == {
            (*A, 1.0, 20.0), (*B, 2.0, 20.0)}
        assert gw.delivery.pair_log_compactions == 1
        await gw.delivery.compact_pair_log()  # 2 records, under the 3 that make it due
        assert gw.delivery.pair_log_compactions == 1

    await with_gateway(tmp_path, body, store_extra="pair_log_compact_entries = 3")
    gw = _restarted(tmp_path)
    try:
        assert gw.scheduler.pair_state(*A) == (1.0, 20.0) and gw.scheduler.pair_state(*C) is None
        assert gw.delivery.pair_log.table == "pairlog_b"
    finally:
        gw.close()


async def test_a_compaction_a_crash_cut_short_finishes_after_the_restart(tmp_path):
    async def body(gw, link):  # records in both tables, the old one never dropped
        log = gw.delivery.pair_log
        await _dispatch(gw, [(*A, (1.0, 30.0)), (*B, (2.0, 30.0))])
        log.start_compaction()
        await _dispatch(gw, [(*A, (0.0, 31.0))])

    await with_gateway(tmp_path, body)

    async def finish(gw, link):
        gw.delivery.rebuild()
        assert gw.scheduler.pair_state(*A) == (0.0, 31.0) and gw.delivery.pair_log.due()
        await gw.delivery.compact_pair_log()
        assert gw.store.count("pairlog_a") == 0 and not gw.delivery.pair_log.due()
        latest = {}
        for k, v in gw.store.scan("pairlog_b"):
            _, s, r, tokens, last = pairlog.decode(k, v)
            latest[(s, r)] = (tokens, last)
        assert latest == {A: (0.0, 31.0), B: (2.0, 30.0)}

    await with_gateway(tmp_path, finish)


async def test_pair_rows_of_an_earlier_version_move_into_the_journal(tmp_path):
    async def body(gw, link):
        await _dispatch(gw, [(*B, (9.0, 40.0))])

    await with_gateway(tmp_path, body)
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=len(R.TABLES) + 4)
    with env.begin(write=True) as txn:
        db = env.open_db(b"limiter", txn=txn)
        # B's journal record is newer than its row; C's row was written after its journal record
        # (an earlier version ran again in between): the later take wins
        for (s, r), state in ((A, (4.0, 41.0)), (B, (1.0, 39.0)), (C, (0.0, 42.0))):
            txn.put(b"p\0" + s.encode() + b"\0" + r.encode(), ops.encode(state), db=db)
    env.close()
    gw = _restarted(tmp_path)
    try:
        sched = gw.scheduler
        assert (sched.pair_state(*A), sched.pair_state(*B), sched.pair_state(*C)) == (
            (4.0, 41.0), (9.0, 40.0), (0.0, 42.0))
        assert gw.store.scan("limiter", b"p\0") == []
        assert [pairlog.decode(k, v)[1:3] for k, v in gw.store.scan("pairlog_a")] == [B, A, C]
    finally:
        gw.close()
    gw = _restarted(tmp_path)  # once moved, the same again from the journal alone
    try:
        assert gw.scheduler.pair_state(*C) == (0.0, 42.0) and gw.scheduler.pair_state(*A) == (4.0, 41.0)
    finally:
        gw.close()


async def test_pair_rows_stay_and_count_when_the_store_is_too_full_to_move_them(tmp_path, monkeypatch):
    await with_gateway(tmp_path, lambda gw, link: trio.sleep(0))
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=len(R.TABLES) + 4)
    with env.begin(write=True) as txn:
        txn.put(b"p\0" + A[0].encode() + b"\0" + A[1].encode(), ops.encode((4.0, 41.0)),
                db=env.open_db(b"limiter", txn=txn))
    env.close()

    def full(txn, dbs, arg):
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    monkeypatch.setattr(ops, "copy_pairs", full)
    gw = _restarted(tmp_path)
    try:
        assert gw.scheduler.pair_state(*A) == (4.0, 41.0)
        assert len(gw.store.scan("limiter", b"p\0")) == 1 and gw.store.count("pairlog_a") == 0
    finally:
        gw.close()


async def test_a_full_store_puts_a_compaction_off_and_the_next_round_finishes_it(tmp_path, monkeypatch):
    copy_pairs = ops.copy_pairs
    calls = []

    def full_once(txn, dbs, arg):
        calls.append(arg.drop)
        if len(calls) == 1:
            raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")
        return copy_pairs(txn, dbs, arg)

    monkeypatch.setattr(ops, "copy_pairs", full_once)

    async def body(gw, link):
        gw.scheduler.restore_pair(*A, 1.0, 50.0)
        await _dispatch(gw, [(*A, (1.0, 50.0)), (*B, (2.0, 50.0)), (*C, (3.0, 50.0))])
        with trio.fail_after(5):  # returns instead of retrying against a full store
            await gw.delivery.compact_pair_log()
        log = gw.delivery.pair_log
        assert gw.delivery.pair_log_compactions == 0 and gw.store.count("pairlog_a") == 3 and log.due()
        await _dispatch(gw, [(*A, (0.0, 51.0))])  # goes to the new table meanwhile
        gw.scheduler.restore_pair(*A, 0.0, 51.0)
        await gw.delivery.compact_pair_log()
        assert calls == [0, 0] and log.table == "pairlog_b" and gw.delivery.pair_log_compactions == 1
        assert gw.store.count("pairlog_a") == 0
        assert [pairlog.decode(k, v)[1:] for k, v in gw.store.scan("pairlog_b")] == [
            (*A, 0.0, 51.0), (*A, 0.0, 51.0)]

    await with_gateway(tmp_path, body, store_extra="pair_log_compact_entries = 3")


# -- a real gateway process -----------------------------------------------------------------------


def test_a_pairs_limit_holds_across_compactions_and_a_kill_9(tmp_path):
    gw = Gateway(tmp_path, scheduler="pair_rate_per_minute = 1.0\npair_burst = 3")
    gw.config_text = gw.config_text.replace("map_size_mb = 256", "map_size_mb = 256\npair_log_compact_entries = 1")
    gw.config_path.write_text(gw.config_text)
    gw.start()
    try:
        ids = [gw.send("+14155550100") for _ in range(5)]
        for msg_id in ids[:3]:
            gw.wait_status(msg_id, {"delivered", "read"})
        deadline = time.monotonic() + 10
        while gw.metric("gateway_pair_log_compactions_total") < 1:  # the state now lives in the second table
            assert time.monotonic() < deadline, "the pair journal was never compacted"
            time.sleep(0.1)
        gw.kill()
        gw.start()
        gw.wait_status(gw.send("+14155550199"), {"delivered", "read"})  # dispatching again after the restart
        time.sleep(0.5)
        statuses = [gw.request("GET", f"/v1/messages/{m}")[1]["status"] for m in ids]
        assert statuses[3:] == ["accepted", "accepted"]  # the pair's burst stayed spent across the restart
    finally:
        gw.stop()
