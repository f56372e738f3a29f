"""Closed-loop HTTP/1.1 load client on plain non-blocking sockets + epoll, meant for its own process/core.

It owns request pacing and latency recording only; it must never become the bottleneck (no trio,
no full HTTP parsing: responses are framed by Content-Length) and never pull in extra dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

# Log-linear latency histogram over microseconds: values < 128 get exact buckets, above that every
# power of two is split into 64 buckets (<= 1.6% relative error).
_SUB = 64
_BUCKETS = 64 * _SUB


def _bucket_value(idx: int) -> float:
    if idx < 2 * _SUB:
        return float(idx)
    shift = idx // _SUB - 1
    return ((idx - shift * _SUB) << shift) + (1 << shift) / 2


def _percentiles(hist: list[int], total: int, max_us: int) -> dict[str, float]:
    wanted = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99_9": 0.999}
    out = {k: 0.0 for k in wanted}
    if total:
        targets = sorted((max(1, int(q * total + 0.999999)), k) for k, q in wanted.items())
        seen = 0
        ti = 0
        for idx, n in enumerate(hist):
            if not n:
                continue
            seen += n
            while ti < len(targets) and seen >= targets[ti][0]:
                out[targets[ti][1]] = round(min(_bucket_value(idx), max_us) / 1000.0, 3)
                ti += 1
            if ti == len(targets):
                break
    out["max"] = round(max_us / 1000.0, 3)
    return out


class _Conn:
    __slots__ = ("sock", "buf", "sent_at", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.sent_at = 0.0
        self.pending = b""


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


# Response head → (status code bytes, Content-Length, is interim 1xx); heads repeat, so memoise.
_HEADS: dict[bytes, tuple[bytes, int, bool]] = {}


def _parse_head(head: bytes) -> tuple[bytes, int, bool]:
    lower = head.lower()
    pos = lower.find(b"\r\ncontent-length:")
    length = 0
    if pos >= 0:
        end = lower.find(b"\r\n", pos + 2)
        length = int(lower[pos + 17:end if end >= 0 else len(lower)])
    info = (head[9:12], length, head[9:10] == b"1")
    if len(_HEADS) < 1024:
        _HEADS[head] = info
    return info


class _Load:
    """The epoll loop: one request in flight per connection, responses framed by Content-Length."""

    def __init__(self, host: str, port: int, make_request: Callable[[int], bytes]) -> None:
        self.host, self.port = host, port
        self.make_request = make_request
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.seq = 0
        self.hist = [0] * _BUCKETS
        self.statuses: dict[bytes, int] = {}
        self.counted = 0
        self.max_us = 0
        self.errors = 0

    def send(self, conn: _Conn, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # peer went away: the next recv sees EOF/reset and reconnects
            return
        if sent < len(data):
            conn.pending = data[sent:]
            self.ep.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def flush(self, fd: int, conn: _Conn) -> None:
        sent = conn.sock.send(conn.pending)
        conn.pending = conn.pending[sent:]
        if not conn.pending:
            self.ep.modify(fd, select.EPOLLIN)

    def open_conn(self, now: float) -> None:
        conn = _Conn(_connect(self.host, self.port))
        self.conns[conn.sock.fileno()] = conn
        self.ep.register(conn.sock.fileno(), select.EPOLLIN)
        conn.sent_at = now
        self.send(conn, self.make_request(self.seq))
        self.seq += 1

    def reconnect(self, fd: int, conn: _Conn, now: float) -> None:
        self.errors += 1
        self.ep.unregister(fd)
        del self.conns[fd]
        conn.sock.close()
        self.open_conn(now)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        self.ep.close()

    def run(self, until: float, measure_from: float) -> None:
        """The hot loop; everything per response is inlined on purpose."""
        conns, poll, heads, hist, statuses = self.conns, self.ep.poll, _HEADS, self.hist, self.statuses
        make_request, send = self.make_request, self.send
        EPOLLIN, top = select.EPOLLIN, _BUCKETS - 1
        seq, counted, max_us = self.seq, self.counted, self.max_us
        now = perf_counter()
        while now < until:
            events = poll(min(0.1, until - now))
            now = perf_counter()
            measuring = now >= measure_from
            for fd, ev in events:
                conn = conns[fd]
                if ev != EPOLLIN:
                    if ev & select.EPOLLOUT and conn.pending:
                        self.flush(fd, conn)
                    if not ev & (EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        continue
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.seq = seq
                    self.reconnect(fd, conn, now)
                    seq = self.seq
                    continue
                buf = conn.buf + data if conn.buf else data
                while True:
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end < 0:
                        break
                    head = buf[:head_end]
                    status, length, interim = heads.get(head) or _parse_head(head)
                    total = head_end + 4 + length
                    if len(buf) < total:
                        break
                    buf = buf[total:] if len(buf) > total else b""
                    if interim:
                        continue
                    if measuring:
                        counted += 1
                        statuses[status] = statuses.get(status, 0) + 1
                        us = int((now - conn.sent_at) * 1e6)
                        if us > max_us:
                            max_us = us
                        if us < 128:
                            hist[us] += 1
                        else:
                            shift = us.bit_length() - 7
                            hist[min(shift * _SUB + (us >> shift), top)] += 1
                    conn.sent_at = now
                    send(conn, make_request(seq))
                    seq += 1
                conn.buf = buf
        self.seq, self.counted, self.max_us = seq, counted, max_us

    def result(self, seconds: float, connections: int) -> dict:
        return {
            "requests": self.counted,
            "seconds": round(seconds, 3),
            "rps": round(self.counted / seconds, 1),
            "status": {int(k): v for k, v in sorted(self.statuses.items())},
            "latency_ms": _percentiles(self.hist, self.counted, self.max_us),
            "errors": self.errors,
            "connections": connections,
        }


def run_load(host: str, port: int, *, connections: int, duration_s: float,
             make_request: Callable[[int], bytes], warmup_s: float = 1.0,
             on_measure: Callable[[bool], None] | None = None) -> dict:
    """Keep one request in flight per connection for warmup_s + duration_s; report the measured part.
    `on_measure(True)` is called as the measured part starts and `on_measure(False)` as it ends (e.g.
    to read the server's CPU time)."""
    load = _Load(host, port, make_request)
    try:
        now = perf_counter()
        for _ in range(connections):
            load.open_conn(now)
        measure_from = perf_counter() + warmup_s
        load.run(measure_from, measure_from)
        if on_measure is not None:
            on_measure(True)
        measure_from = perf_counter()
        load.run(measure_from + duration_s, measure_from)
        measured = max(1e-9, perf_counter() - measure_from)
        if on_measure is not None:
            on_measure(False)
    finally:
        load.close()
    return load.result(measured, connections)


def _get_request(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: loadclient\r\n\r\n".encode()


def _canned_server(cpu: int) -> None:
    """A responder that cannot be the bottleneck (loadtest.noop's canned 202), for measuring this
    client's own ceiling (`--ceiling`)."""
    from loadtest.noop import serve

    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass
    lsock = socket.create_server(("127.0.0.1", 0), backlog=256)
    print(lsock.getsockname()[1], flush=True)
    serve(lsock)


def _ceiling(connections: int, duration_s: float, warmup_s: float) -> dict:
    """This client's own maximum: drive the canned responder (CPU 0) from this process (CPU 1)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.loadclient", "--canned-server"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        port = int(proc.stdout.readline())
        try:
            os.sched_setaffinity(0, {1})
        except (AttributeError, OSError):
            pass
        request = _get_request("127.0.0.1", port, "/")
        return run_load("127.0.0.1", port, connections=connections, duration_s=duration_s,
                        make_request=lambda _i: request, warmup_s=warmup_s)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="closed-loop HTTP GET load")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--ceiling", action="store_true",
                    help="measure this client's own ceiling against a canned responder")
    ap.add_argument("--canned-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.canned_server:
        _canned_server(0)
        return 0
    if args.ceiling:
        result = _ceiling(args.connections, args.duration, args.warmup)
    else:
        request = _get_request(args.host, args.port, args.path)
        result = run_load(args.host, args.port, connections=args.connections,
                          duration_s=args.duration, make_request=lambda _i: request,
                          warmup_s=args.warmup)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
