"""The event loop's time by kind of task (gateway.loopstats): the Instrument's arithmetic under an
injected clock, the labels, and the real thing inside a trio run."""
import pytest
import trio

from gateway.loopstats import LONG_S, LoopStats, task_label


class FakeTask:
    def __init__(self, name: str) -> None:
        self.name = name


def test_task_labels_are_short_and_bounded():
    assert task_label("gateway.http.server._Mux.run") == "http"
    assert task_label("gateway.http.server._Server.serve_conn") == "http"
    assert task_label("gateway.store.writer.Writer.run") == "store"
    assert task_label("gateway.delivery.Delivery.run_dispatch") == "delivery"
    assert task_label("gateway.network.link.NetworkLink.run") == "network"
    assert task_label("gateway.app.Gateway._housekeeping") == "app"
    assert task_label("loadtest.netsim.server.NetsimServer._timer") == "netsim"
    assert task_label("trio._highlevel_serve_listeners._run_handler") == "netsim"
    assert task_label("trio._highlevel_open_tcp_stream.open_tcp_stream.<locals>.attempt_connect") == "trio"
    assert task_label("<TrioToken.run_sync_soon task>") == "trio"
    assert task_label("main") == "main"


def test_steps_add_up_by_label_and_io_waits_as_idle():
    now = [0.0]
    stats = LoopStats(clock=lambda: now[0])
    mux, writer, other = (FakeTask("gateway.http.server._Mux.run"), FakeTask("gateway.store.writer.Writer.run"),
                          FakeTask("gateway.app.Gateway._housekeeping"))
    stats.after_task_step(other)  # the step that added the instrument: no start seen, not counted
    for task, took in ((mux, 0.002), (writer, 0.0005), (mux, 0.001), (other, 0.25)):
        stats.before_task_step(task)
        now[0] += took
        stats.after_task_step(task)
    stats.before_io_wait(1.0)
    now[0] += 0.75
    stats.after_io_wait(1.0)
    assert stats.busy == {"http": 0.003, "store": 0.0005, "app": 0.25}
    assert stats.steps == {"http": 2, "store": 1, "app": 1}
    assert stats.idle == 0.75


def test_in_a_trio_run_busy_and_idle_time_are_counted():
    stats = LoopStats()

    async def spin():
        end = trio.current_time() + 0.02
        while trio.current_time() < end:  # busy, in one step
            pass
        await trio.sleep(0.05)  # idle: the loop waits for I/O (its timer)

    async def main():
        trio.lowlevel.add_instrument(stats)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin, name="gateway.delivery.Delivery.run_dispatch")

    trio.run(main)
    assert stats.busy["delivery"] >= 0.02 and stats.steps["delivery"] >= 2
    assert max(stats.busy.values()) < 1  # the step that added the instrument is not counted (from 0)
    assert stats.idle >= 0.04


def test_long_steps_are_counted_by_label_and_threshold_and_long_batches_too():
    assert LONG_S == (0.002, 0.005, 0.010, 0.050)
    now = [0.0]
    stats = LoopStats(clock=lambda: now[0])
    mux, writer = FakeTask("gateway.http.server._Mux.run"), FakeTask("gateway.store.writer.Writer.run")
    stats.before_io_wait(0.0)  # the first wait: no batch before it was seen
    stats.after_io_wait(0.0)
    for task, took in ((mux, 0.001), (mux, 0.003), (writer, 0.006), (writer, 0.012)):
        stats.before_task_step(task)
        now[0] += took
        stats.after_task_step(task)
    stats.before_io_wait(0.0)  # one batch of 22 ms
    now[0] += 1.0
    stats.after_io_wait(0.0)
    now[0] += 0.001
    stats.before_io_wait(0.0)  # a short one
    assert stats.long_steps == {"http": [1, 0, 0, 0], "store": [2, 2, 1, 0]}
    assert stats.longest_step == pytest.approx({"http": 0.003, "store": 0.012})
    assert stats.long_batches == [1, 1, 1, 0] and stats.longest_batch == pytest.approx(0.022)
