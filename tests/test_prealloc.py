"""LMDB's data file kept ahead of its data with written zeros (store/prealloc.py): the pure plan,
the writer thread's top-ups, data intact after reopening, a failing disk turns it off, and a real
gateway process reports it."""
import errno
import logging
import os
import re

import pytest
import trio

from gateway.store import prealloc
from gateway.store.env import open_store
from gateway.store.prealloc import Preallocator, plan
from gateway.store.writer import Writer
from tests.harness import Gateway

MiB = 1024 * 1024


def test_plan_tops_up_to_ahead_once_less_than_half_is_left():
    assert plan(used=10 * MiB, file_size=10 * MiB, map_size=100 * MiB, ahead=2 * MiB) == (10 * MiB, 2 * MiB)
    # more than half of `ahead` left past the data: nothing to do
    assert plan(used=10 * MiB, file_size=11 * MiB + 1, map_size=100 * MiB, ahead=2 * MiB) is None
    assert plan(used=10 * MiB, file_size=11 * MiB, map_size=100 * MiB, ahead=2 * MiB) is None
    # less than half left: from the end of the file up to used + ahead
    assert plan(used=10 * MiB + 1, file_size=11 * MiB, map_size=100 * MiB, ahead=2 * MiB) == (11 * MiB, MiB + 1)


def test_plan_starts_at_the_data_when_the_file_is_behind_it():
    # LMDB grew the file itself past what was written ahead (a large transaction, say)
    assert plan(used=20 * MiB, file_size=12 * MiB, map_size=100 * MiB, ahead=2 * MiB) == (20 * MiB, 2 * MiB)


def test_plan_never_goes_past_the_map_and_is_off_at_zero():
    assert plan(used=99 * MiB, file_size=99 * MiB, map_size=100 * MiB, ahead=4 * MiB) == (99 * MiB, MiB)
    assert plan(used=100 * MiB, file_size=100 * MiB, map_size=100 * MiB, ahead=4 * MiB) is None
    assert plan(used=MiB, file_size=MiB, map_size=100 * MiB, ahead=0) is None


def put(txn, dbs, arg):
    key, value = arg
    txn.put(key, value, db=dbs["messages"])


def _file_and_used(store) -> tuple[int, int]:
    info, stat = store.env.info(), store.env.stat()
    return os.path.getsize(os.path.join(store.path, "data.mdb")), (info["last_pgno"] + 1) * stat["psize"]


async def _write_all(writer: Writer, values: dict[bytes, bytes], per_commit: int = 20,
                     each_commit=None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        items = list(values.items())
        for start in range(0, len(items), per_commit):
            async with trio.open_nursery() as senders:
                for item in items[start:start + per_commit]:
                    senders.start_soon(writer.write, put, item)
            if each_commit is not None:
                each_commit()
        nursery.cancel_scope.cancel()


async def test_the_file_stays_ahead_of_the_data_and_the_data_survives_reopening(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=64)
    ahead = 256 * 1024
    pre = Preallocator(os.path.join(store.path, "data.mdb"), ahead)
    writer = Writer(store.env, store.dbs, window_s=0.0, prealloc=pre)
    values = {b"k%05d" % i: os.urandom(1500) for i in range(2000)}  # ~3 MiB of data: many top-ups
    seen = []

    def check():
        size, used = _file_and_used(store)
        seen.append(size - used)
        assert size >= used

    await _write_all(writer, values, each_commit=check)
    assert pre.top_ups >= 8 and pre.written >= 8 * ahead // 2
    # after each commit the file was ahead of the data, never by more than `ahead`
    assert max(seen) <= ahead and sum(1 for gap in seen if gap > 0) >= 0.9 * len(seen)
    store.close()
    reopened = open_store(str(tmp_path), map_size_mb=64)
    try:
        with reopened.env.begin(db=reopened.dbs["messages"]) as txn:
            assert {bytes(k): bytes(v) for k, v in txn.cursor()} == values
    finally:
        reopened.close()


async def test_zeros_never_go_past_the_map(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=1)
    pre = Preallocator(os.path.join(store.path, "data.mdb"), 8 * MiB)
    writer = Writer(store.env, store.dbs, window_s=0.0, prealloc=pre)
    await _write_all(writer, {b"k%d" % i: b"v" * 100 for i in range(50)})
    assert os.path.getsize(os.path.join(store.path, "data.mdb")) == MiB == store.env.info()["map_size"]
    store.close()


async def test_a_failing_disk_turns_it_off_and_the_writer_goes_on(tmp_path, monkeypatch, caplog):
    store = open_store(str(tmp_path), map_size_mb=64)
    pre = Preallocator(os.path.join(store.path, "data.mdb"), MiB)
    writer = Writer(store.env, store.dbs, window_s=0.0, prealloc=pre)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prealloc.os, "pwrite", full)
    values = {b"k%04d" % i: os.urandom(500) for i in range(400)}
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        await _write_all(writer, values)
    assert pre.written == 0 and pre.top_ups == 0
    assert sum("stopped: [Errno 28]" in r.getMessage() for r in caplog.records) == 1  # once, then off
    assert all(store.get("messages", k) == v for k, v in values.items())
    store.close()


async def test_zero_turns_it_off(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=64)
    pre = Preallocator(os.path.join(store.path, "data.mdb"), 0)
    writer = Writer(store.env, store.dbs, window_s=0.0, prealloc=pre)
    await _write_all(writer, {b"k%04d" % i: os.urandom(1500) for i in range(300)})
    size, used = _file_and_used(store)
    assert pre.written == 0 and size == used
    store.close()


def test_a_gateway_keeps_its_store_ahead_and_reports_it(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        for i in range(300):
            gw.send(f"+1415563{i:04d}", body="x" * 2000)
        _, text = gw.request("GET", "/metrics", auth=False)
        written = int(re.search(rb"^gateway_storage_preallocated_bytes_total (\d+)", text, re.M).group(1))
        used = int(re.search(rb"^gateway_storage_used_bytes (\d+)", text, re.M).group(1))
        size = os.path.getsize(os.path.join(gw.data_dir, "lmdb", "data.mdb"))
        assert written >= MiB and used <= size <= used + 2 * MiB  # the default preallocate_mb = 2
    finally:
        gw.stop()
    gw.start()  # the zeros past the data are nothing to LMDB after a restart either
    try:
        assert gw.request("GET", "/readyz", auth=False)[0] == 200
        gw.send("+14155639999")
    finally:
        gw.stop()


def test_check_config_refuses_a_negative_size(tmp_path):
    from gateway.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match=r"store\.preallocate_mb"):
        parse_config('[store]\npreallocate_mb = -1\n')
