"""Group commit: one transaction for many callers, answers only after the commit, a full map
refuses the whole batch and writes none of it."""
import lmdb
import pytest
import trio

from gateway.store.env import open_store
from gateway.store.writer import WAIT_PAYS, WAIT_TRIAL_EVERY, WAIT_WEIGHT, StorageFull, Writer


def put(txn, dbs, arg):
    key, value = arg
    txn.put(key, value, db=dbs["messages"])
    return key


def boom(txn, dbs, arg):
    raise ValueError("bad op")


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path), map_size_mb=64)
    yield s
    s.close()


async def test_concurrent_writes_share_one_commit(store):
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.05)
    results = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def one(i):
            results[i] = await writer.write(put, (b"k%03d" % i, b"v"))

        async with trio.open_nursery() as senders:
            for i in range(50):
                senders.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert writer.commits == 1 and writer.ops_committed == 50
    assert results == {i: b"k%03d" % i for i in range(50)}


async def test_each_commit_reports_how_long_the_loop_waited_for_it(store):
    took: list[float] = []
    writer = Writer(store.env, store.dbs, max_ops=10, window_s=1.0, on_commit=took.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as senders:
            for i in range(25):
                senders.start_soon(writer.write, put, (b"k%03d" % i, b"v"))
        with pytest.raises(ValueError):
            await writer.write(boom)  # dropped from its batch, which then commits nothing: still a commit
        nursery.cancel_scope.cancel()
    assert len(took) == writer.commits == 4 and all(0 < t < 5 for t in took)


async def test_a_lazy_write_alone_commits_once_its_wait_is_over(store):
    writer = Writer(store.env, store.dbs, window_s=0.001, lazy_s=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        t0 = trio.current_time()
        assert await writer.write(put, (b"late", b"v"), lazy=True) == b"late"
        waited = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert 0.3 <= waited < 2 and writer.commits == 1
    assert store.get("messages", b"late") == b"v"


async def test_lazy_writes_share_the_commit_that_a_plain_write_starts(store):
    writer = Writer(store.env, store.dbs, window_s=0.001, lazy_s=5.0)
    lazy_done: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(3):
            writer.submit(put, (b"lazy%d" % i, b"v"), lambda result, error: lazy_done.append((result, error)),
                          lazy=True)
        await trio.sleep(0.05)
        assert writer.commits == 0 and lazy_done == []  # nothing started a commit yet
        with trio.fail_after(1):  # far below the lazy writes' 5 s
            await writer.write(put, (b"plain", b"v"))
        await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert writer.commits == 1 and writer.ops_committed == 4
    assert lazy_done == [(b"lazy0", None), (b"lazy1", None), (b"lazy2", None)]


async def test_batch_closes_at_max_ops(store):
    writer = Writer(store.env, store.dbs, max_ops=10, window_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as senders:
            for i in range(25):
                senders.start_soon(writer.write, put, (b"k%03d" % i, b"v"))
        nursery.cancel_scope.cancel()
    assert writer.commits == 3 and writer.ops_committed == 25


async def test_a_write_waits_out_the_window_so_that_later_ones_share_its_commit(store):
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def later():
            await trio.sleep(0.1)  # the loop was idle in between: the window still holds the batch
            await writer.write(put, (b"later", b"v"))

        t0 = trio.current_time()
        nursery.start_soon(later)
        await writer.write(put, (b"first", b"v"))
        waited = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert 0.3 <= waited < 2
    assert writer.commits == 1 and writer.ops_committed == 2


async def _round(writer, writes: int, join_after: float | None = None) -> float:
    """`writes` writes at once (and, after `join_after` s, one more caller joining the first one's
    operation, as a message joins a group of accepts); how long until all are committed."""
    t0 = trio.current_time()
    done = trio.Event()
    left = [writes]

    def one_done(result, error):
        left[0] -= 1
        if not left[0]:
            done.set()

    batches = [writer.submit(put, (b"r%03d" % i, b"v"), one_done) for i in range(writes)]
    if join_after is not None:
        await trio.sleep(join_after)
        writer.joined(batches[0])
    await done.wait()
    return trio.current_time() - t0


async def test_waiting_out_the_window_stops_when_it_does_not_pay_and_is_tried_again(store):
    # a cohort: every caller is in the batch already, waiting only delays their commit
    waits, score = 0, 1.0
    while score >= WAIT_PAYS:  # the unpaid waits before the writer stops waiting
        waits, score = waits + 1, score * (1 - WAIT_WEIGHT)
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        took = [await _round(writer, 8) for _ in range(waits + WAIT_TRIAL_EVERY + 2)]
        nursery.cancel_scope.cancel()
    waited = [t >= 0.2 for t in took]
    assert waited[:waits] == [True] * waits
    assert not any(waited[waits:waits + WAIT_TRIAL_EVERY - 1])
    assert waited[waits + WAIT_TRIAL_EVERY - 1]  # one more try


async def test_callers_joining_the_batch_during_the_window_keep_it_waiting(store):
    # one request, and another that joins its accept group while the batch waits: waiting pays
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        took = [await _round(writer, 1, join_after=0.05) for _ in range(12)]
        nursery.cancel_scope.cancel()
    assert all(t >= 0.2 for t in took)


async def test_a_zero_window_commits_each_write_at_once(store):
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.fail_after(2):
            for i in range(5):
                t0 = trio.current_time()
                await writer.write(put, (b"w%d" % i, b"v"))
                assert trio.current_time() - t0 < 0.05  # one commit, no window
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert writer.commits == 5


async def test_lazy_writes_alone_do_not_wait_for_the_window_too(store):
    # a window far longer than a commit on a busy machine, so that waiting it out cannot pass for a commit
    writer = Writer(store.env, store.dbs, window_s=3.0, lazy_s=0.0)  # lazy 0: a commit at once
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        t0 = trio.current_time()
        with trio.fail_after(10):
            await writer.write(put, (b"lazy", b"v"), lazy=True)
        waited = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert waited < 1.5


async def test_a_batch_that_fills_during_the_window_commits_at_once(store):
    writer = Writer(store.env, store.dbs, max_ops=10, window_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.fail_after(2):  # far below the 5 s window
            async with trio.open_nursery() as senders:
                senders.start_soon(writer.write, put, (b"k000", b"v"))
                await trio.sleep(0.1)  # the writer is waiting out the window now
                for i in range(1, 10):
                    senders.start_soon(writer.write, put, (b"k%03d" % i, b"v"))
        nursery.cancel_scope.cancel()
    assert writer.commits == 1 and writer.ops_committed == 10


async def test_written_data_is_committed_when_write_returns(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=64)
    writer = Writer(store.env, store.dbs)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.write(put, (b"durable", b"yes"))
        nursery.cancel_scope.cancel()
    store.close()  # reopen from disk: the value is there without any further commit
    other = lmdb.open(store.path, max_dbs=16, readonly=True, lock=False)
    with other.begin(db=other.open_db(b"messages", create=False)) as txn:
        assert txn.get(b"durable") == b"yes"
    other.close()


async def test_failing_op_fails_only_its_caller(store):
    writer = Writer(store.env, store.dbs, window_s=0.05)
    outcome = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def good():
            outcome["good"] = await writer.write(put, (b"ok", b"v"))

        async def bad():
            try:
                await writer.write(boom)
            except ValueError as exc:
                outcome["bad"] = str(exc)

        async with trio.open_nursery() as senders:
            senders.start_soon(good)
            senders.start_soon(bad)
        nursery.cancel_scope.cancel()
    assert outcome == {"good": b"ok", "bad": "bad op"}
    assert store.get("messages", b"ok") == b"v"


async def test_full_map_refuses_the_whole_batch_and_keeps_working(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=1)
    writer = Writer(store.env, store.dbs, window_s=0.0)  # one write at a time: no window to wait out
    big = b"x" * 3000
    accepted = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with pytest.raises(StorageFull):
            for i in range(1000):
                accepted.append(await writer.write(put, (b"k%04d" % i, big)))
        # the refused batch wrote nothing, everything answered before it is there
        assert store.get("messages", b"k%04d" % len(accepted)) is None
        assert all(store.get("messages", k) == big for k in accepted)
        # small writes still fit after deleting room
        await writer.write(lambda txn, dbs, a: txn.delete(accepted[0], db=dbs["messages"]))
        await writer.write(put, (b"small", b"v"))
        nursery.cancel_scope.cancel()
    store.close()


def put_then_fail(txn, dbs, arg):
    txn.put(b"half", b"written", db=dbs["messages"])
    raise ValueError("failed after writing")


async def test_an_op_that_fails_after_writing_leaves_nothing_behind(store):
    writer = Writer(store.env, store.dbs, window_s=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def bad():
            with pytest.raises(ValueError):
                await writer.write(put_then_fail)

        async with trio.open_nursery() as senders:
            senders.start_soon(writer.write, put, (b"before", b"v"))
            senders.start_soon(bad)
            senders.start_soon(writer.write, put, (b"after", b"v"))
        nursery.cancel_scope.cancel()
    assert store.get("messages", b"half") is None
    assert store.get("messages", b"before") == b"v" and store.get("messages", b"after") == b"v"


async def test_an_idle_writer_holds_no_write_lock(store):
    """Write transactions are begun only for waiting work, so another writer (the `gateway keys
    create` CLI, say) is never locked out by an idle gateway."""
    writer = Writer(store.env, store.dbs, window_s=0.05)

    def write_elsewhere():
        with store.env.begin(write=True) as txn:
            txn.put(b"cli", b"v", db=store.dbs["messages"])

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as senders:
            for i in range(20):
                senders.start_soon(writer.write, put, (b"k%03d" % i, b"v"))
        with trio.fail_after(5):
            await trio.to_thread.run_sync(write_elsewhere, abandon_on_cancel=True)
        await writer.write(put, (b"after", b"v"))
        nursery.cancel_scope.cancel()
    assert store.get("messages", b"cli") == b"v" and store.get("messages", b"after") == b"v"


async def test_submitted_op_calls_back_after_its_commit(store):
    writer = Writer(store.env, store.dbs, window_s=0.05)
    calls = []

    def done(result, error):
        # durable by now: a fresh read transaction sees it
        calls.append((result, error, store.get("messages", b"cb")))

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(put, (b"cb", b"v"), done)
        assert calls == []
        await writer.write(put, (b"later", b"v"))  # a later commit: the callback has run by then
        nursery.cancel_scope.cancel()
    assert calls == [(b"cb", None, b"v")]


async def test_submitted_callbacks_run_in_queue_order(store):
    writer = Writer(store.env, store.dbs, window_s=0.05)
    order = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(5):
            writer.submit(put, (b"k%d" % i, b"v"), lambda result, error: order.append(result))
        await writer.write(put, (b"last", b"v"))
        nursery.cancel_scope.cancel()
    assert order == [b"k0", b"k1", b"k2", b"k3", b"k4"]


async def test_a_failing_submitted_op_reports_its_error_and_spares_the_others(store):
    writer = Writer(store.env, store.dbs, window_s=0.05)
    seen = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(boom, None, lambda result, error: seen.__setitem__("bad", (result, error)))
        writer.submit(put, (b"ok", b"v"), lambda result, error: seen.__setitem__("good", (result, error)))
        await writer.write(put, (b"last", b"v"))
        nursery.cancel_scope.cancel()
    assert seen["good"] == (b"ok", None)
    assert seen["bad"][0] is None and isinstance(seen["bad"][1], ValueError)


async def test_a_full_map_reports_storage_full_to_submitted_ops(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=1)
    writer = Writer(store.env, store.dbs, window_s=0.05)
    errors = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(1000):
            writer.submit(put, (b"k%04d" % i, b"x" * 3000), lambda result, error: errors.append(error))
        with pytest.raises(StorageFull):
            await writer.write(put, (b"last", b"x" * 3000))
        nursery.cancel_scope.cancel()
    assert len(errors) == 1000 and all(isinstance(e, StorageFull) for e in errors)
    assert store.get("messages", b"k0000") is None
    store.close()


async def test_a_callback_that_raises_does_not_stop_the_writer(store, caplog):
    writer = Writer(store.env, store.dbs, window_s=0.05)

    def broken(result, error):
        raise RuntimeError("callback bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(put, (b"a", b"v"), broken)
        await writer.write(put, (b"b", b"v"))
        await writer.write(put, (b"c", b"v"))
        nursery.cancel_scope.cancel()
    assert store.get("messages", b"c") == b"v"
    assert "callback of store operation put failed" in caplog.text


async def test_a_long_batch_lets_other_tasks_run_between_its_ops_and_commits_whole(store, monkeypatch):
    import time

    from gateway.store import writer as writer_module

    monkeypatch.setattr(writer_module, "APPLY_SLICE_S", 0.001)
    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.05)
    ran_during_apply: list[int] = []
    applying = []

    def slow_put(txn, dbs, arg):
        applying.append(arg[0])
        time.sleep(0.0015)  # each op alone exceeds the slice
        return put(txn, dbs, arg)

    async def watcher():
        while len(applying) < 6:
            if applying:
                ran_during_apply.append(len(applying))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(watcher)
        async with trio.open_nursery() as senders:
            for i in range(6):
                senders.start_soon(writer.write, slow_put, (b"k%03d" % i, b"v"))
        nursery.cancel_scope.cancel()
    assert writer.commits == 1 and writer.ops_committed == 6  # one batch, one commit
    assert set(ran_during_apply) & {1, 2, 3, 4, 5}  # the watcher ran between ops of that batch
    with store.env.begin(db=store.dbs["messages"]) as txn:
        assert [k for k, _ in txn.cursor()] == [b"k%03d" % i for i in range(6)]


async def test_several_ops_written_together_are_applied_in_order_in_one_commit(store):
    from gateway.store.writer import write_all_until_stored

    order: list[int] = []

    def record(txn, dbs, arg):
        order.append(arg)
        txn.put(b"k%03d" % arg, b"v", db=dbs["messages"])
        return arg * 10

    writer = Writer(store.env, store.dbs, max_ops=1000, window_s=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert await write_all_until_stored(writer, record, list(range(20))) == [i * 10 for i in range(20)]
        nursery.cancel_scope.cancel()
    assert order == list(range(20)) and writer.commits == 1


async def test_writing_several_ops_waits_out_a_full_store_and_raises_an_ops_own_error(tmp_path):
    from gateway.store.writer import write_all_until_stored

    s = open_store(str(tmp_path), map_size_mb=1)
    try:
        writer = Writer(s.env, s.dbs, max_ops=1000, window_s=0.01)
        big = b"x" * 400_000
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with trio.move_on_after(0.5) as waited:  # 3 x 400 KB never fit a 1 MB map: it keeps trying
                await write_all_until_stored(writer, put, [(b"a", big), (b"b", big), (b"c", big)], pause_s=0.05)
            assert waited.cancelled_caught
            with pytest.raises(ValueError, match="bad op"):
                await write_all_until_stored(writer, boom, [None, None])
            nursery.cancel_scope.cancel()
    finally:
        s.close()


def _time_to_take_the_write_lock(env) -> float:
    """Seconds another thread waits to begin a write transaction (the writer's thread holds the lock
    while it has one open); gives up after 5 s."""
    import threading
    import time

    took: list[float] = []

    def take() -> None:
        t0 = time.monotonic()
        env.begin(write=True).abort()
        took.append(time.monotonic() - t0)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(5)
    return took[0] if took else 5.0


async def test_after_a_commit_the_next_transaction_is_held_for_a_while_then_given_back(store):
    """The thread begins the next transaction with the commit (no round trip when the next write
    comes soon) and gives the write lock back to other writers once idle for hold_s."""
    writer = Writer(store.env, store.dbs, window_s=0.001, hold_s=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.write(put, (b"first", b"v"))
        waited = await trio.to_thread.run_sync(_time_to_take_the_write_lock, store.env)
        assert 0.15 < waited < 2  # held after the commit, given back once idle
        await writer.write(put, (b"second", b"v"))  # begins a transaction again, as before
        nursery.cancel_scope.cancel()
    assert writer.commits == 2 and store.get("messages", b"second") == b"v"



async def test_while_work_comes_seldom_no_transaction_is_held_after_a_commit(store):
    """A few requests a second: every transaction held after a commit was given back hold_s later,
    a round trip to the thread and a timer wake per commit for nothing. The writer stops holding
    while holding does not pay, and holds again once work comes within hold_s."""
    writer = Writer(store.env, store.dbs, window_s=0.0, hold_s=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(4):  # gaps longer than hold_s
            await writer.write(put, (b"slow%d" % i, b"v"))
            await trio.sleep(0.35)
        await writer.write(put, (b"after", b"v"))
        waited = await trio.to_thread.run_sync(_time_to_take_the_write_lock, store.env)
        assert waited < 0.15  # not held: the lock is free right after the commit
        for i in range(6):  # now gaps shorter than hold_s
            await writer.write(put, (b"fast%d" % i, b"v"))
            await trio.sleep(0.01)
        await writer.write(put, (b"last", b"v"))
        waited = await trio.to_thread.run_sync(_time_to_take_the_write_lock, store.env)
        assert waited > 0.15  # held again
        nursery.cancel_scope.cancel()
    assert store.get("messages", b"last") == b"v"
