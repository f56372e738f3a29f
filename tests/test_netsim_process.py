"""Specification of netsim as its own process: `python -m loadtest.netsim`, its stats subcommand and --record."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from gateway.network.frames import Ack, Submit
from gateway.network.link import NetworkLink
from loadtest.netsim.server import fetch_stats

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


async def start_netsim(*args: str) -> tuple[trio.Process, int]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "loadtest.netsim", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, cwd=ROOT, env=ENV)
    line = b""
    with trio.fail_after(10):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "netsim exited before announcing its port"
            line += chunk
    assert line.startswith(b"netsim listening on 127.0.0.1:")
    return proc, int(line.rsplit(b":", 1)[1])


async def stop(proc: trio.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        return await proc.wait()


async def submit_and_wait_for_acks(port: int, ids: list[str]) -> None:
    acks: set[str] = set()
    got_all = trio.Event()

    async def on_frames(batch: list) -> None:
        acks.update(f.id for f in batch if isinstance(f, Ack))
        if acks >= set(ids):
            got_all.set()

    async def on_connected() -> None:
        pass

    link = NetworkLink("127.0.0.1", port, on_connected=on_connected, on_frames=on_frames)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        with trio.fail_after(10):
            await link.wait_connected()
            payload = b"\x82\xa4type\xa4text\xa4text\x81\xa4body\xa2hi"  # msgpack {"type": "text", "text": {...}}
            await link.send([Submit(id=i, sender="+15550000000", recipient="+15551112222", payload=payload,
                                    priority=2) for i in ids])
            await got_all.wait()
        nursery.cancel_scope.cancel()


async def test_process_serves_submits_reports_stats_and_exits_zero_on_sigterm():
    proc, port = await start_netsim("--seed", "5", "--latency-ms", "1")
    try:
        await submit_and_wait_for_acks(port, ["p1", "p2", "p2"])
        stats = await fetch_stats("127.0.0.1", port)
        assert (stats["submits"], stats["unique"], stats["duplicates"]) == (3, 2, 1)
    finally:
        code = await stop(proc)
    assert code == 0


async def test_stats_subcommand_prints_the_stats_as_json():
    proc, port = await start_netsim()
    try:
        result = await trio.run_process(
            [sys.executable, "-m", "loadtest.netsim", "stats", "--connect", f"127.0.0.1:{port}"],
            capture_stdout=True, cwd=ROOT, env=ENV)
        assert json.loads(result.stdout)["submits"] == 0
    finally:
        await stop(proc)


async def test_record_file_gets_one_line_per_first_accepted_submit(tmp_path):
    record = tmp_path / "record.jsonl"
    proc, port = await start_netsim("--record", str(record))
    try:
        await submit_and_wait_for_acks(port, ["r1", "r2", "r1"])
    finally:
        assert await stop(proc) == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["r1", "r2"]
    assert {k: lines[0][k] for k in ("sender", "recipient", "priority", "type")} == {
        "sender": "+15550000000", "recipient": "+15551112222", "priority": 2, "type": "text"}
    assert isinstance(lines[0]["at_ms"], int)


async def test_invalid_configuration_exits_with_status_2():
    result = await trio.run_process(
        [sys.executable, "-m", "loadtest.netsim", "--listen", "127.0.0.1:0", "--read-share", "2"],
        check=False, capture_stderr=True, cwd=ROOT, env=ENV)
    assert result.returncode == 2
    assert b"bad configuration" in result.stderr
