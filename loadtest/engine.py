"""The open-loop HTTP/1.1 load engine: requests start when the schedule says, not when a connection frees up.

Raw non-blocking sockets on one epoll set, and the epoll descriptor itself is what the trio task
waits on (`wait_readable`), so one trio wake-up serves every ready connection. Per request it only
formats nothing (the caller pre-encodes), sends, frames the answer by Content-Length and records
the latency from the request's *intended* start, so a slow server cannot hide queueing delay
(no coordinated omission). It must never parse bodies or hold the event loop for long.
"""

from __future__ import annotations

import select
import socket
from array import array
from collections.abc import Callable
from time import perf_counter

import trio
from trio.lowlevel import checkpoint, wait_readable

from loadtest.schedule import Schedule

__all__ = ["LoadEngine", "REFUSED", "TIMEOUT", "BROKEN"]

# Outcomes of requests that got no HTTP answer.
REFUSED = "refused"  # never sent: no connection could be opened (definitely not accepted)
BROKEN = "broken"    # sent, then the connection died before the answer (outcome unknown)
TIMEOUT = "timeout"  # sent, no answer within timeout_s (outcome unknown)

_RECV = 262144
_RETRY_CONNECT_S = 0.05
_SLICE_S = 0.002  # yield to other trio tasks at least this often while busy
_SPIN_S = 0.0002  # poll rather than sleep when the next request (or answer) is due sooner than this
_HEADS: dict[bytes, tuple[bytes, int, bool]] = {}


def _parse_head(head: bytes) -> tuple[bytes, int, bool]:
    """(status code bytes, Content-Length, connection closes after this answer); memoised per head."""
    info = _HEADS.get(head)
    if info is not None:
        return info
    lower = head.lower()
    pos = lower.find(b"\r\ncontent-length:")
    length = 0
    if pos >= 0:
        end = lower.find(b"\r\n", pos + 2)
        length = int(lower[pos + 17:end if end >= 0 else len(lower)])
    info = (head[9:12], length, b"\r\nconnection: close" in lower)
    if len(_HEADS) < 4096:
        _HEADS[head] = info
    return info


class _Conn:
    __slots__ = ("sock", "fd", "buf", "seq", "intended", "sent_at", "busy", "retry_at")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.buf = b""
        self.seq = -1
        self.intended = 0.0
        self.sent_at = 0.0
        self.busy = False
        self.retry_at = 0.0


class LoadEngine:
    """Drive `schedule` against host:port over up to `connections` keep-alive connections.

    `request_for(k)` returns the complete bytes of request k. Answers whose status is in `keep` are
    kept as (k, status, body) for the caller to read afterwards; every other answer is only counted.
    Live counters (issued, completed, statuses, failures) may be read by other trio tasks at any time.
    """

    def __init__(self, host: str, port: int, schedule: Schedule, request_for: Callable[[int], bytes], *,
                 connections: int = 64, keep: tuple[bytes, ...] = (b"202",), timeout_s: float = 30.0) -> None:
        self.host, self.port = host, port
        self.schedule = schedule
        self.request_for = request_for
        self.n_conns = connections
        self.keep = frozenset(keep)
        self.timeout_s = timeout_s
        self.t0 = 0.0
        self.issued = 0
        self.completed = 0
        self.statuses: dict[bytes, int] = {}
        self.failures: dict[str, int] = {REFUSED: 0, BROKEN: 0, TIMEOUT: 0}
        self.unknown_seqs: list[int] = []  # sent but never answered: they may or may not have been accepted
        self.kept: list[tuple[int, bytes, bytes]] = []
        seconds = int(schedule.duration_s + timeout_s) + 2  # answers may come up to timeout_s after the last start
        self.latency_us: list[array] = [array("q") for _ in range(seconds)]  # by intended second
        self.ok_by_sec: list[int] = [0] * seconds      # 2xx answers by intended second
        self.err_by_sec: list[int] = [0] * seconds     # non-2xx answers and failures by intended second
        self.done_by_sec: list[int] = [0] * seconds    # answers by completion second
        self.stop_requested = False
        self.finished = False
        self.inflight = 0
        self.duration_s = 0.0
        self._conns: list[_Conn] = []
        self._by_fd: dict[int, _Conn] = {}
        self._idle: list[_Conn] = []
        self._ep: select.epoll | None = None

    # -- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Issue nothing more; `run` returns once the requests in flight are answered or time out."""
        self.stop_requested = True

    def elapsed(self) -> float:
        return perf_counter() - self.t0 if self.t0 else 0.0

    # -- connections --------------------------------------------------------------------------

    def _open(self, conn: _Conn, now: float) -> bool:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2.0)
        except OSError:
            conn.retry_at = now + _RETRY_CONNECT_S
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock, conn.fd, conn.buf = sock, sock.fileno(), b""
        self._by_fd[conn.fd] = conn
        self._ep.register(conn.fd, select.EPOLLIN)
        return True

    def _drop(self, conn: _Conn, now: float) -> None:
        if conn.sock is None:
            return
        self._by_fd.pop(conn.fd, None)
        try:
            self._ep.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()
        conn.sock, conn.fd, conn.buf = None, -1, b""
        conn.retry_at = now
        if conn.busy:
            self._fail_inflight(conn, BROKEN, now)

    def _fail_inflight(self, conn: _Conn, kind: str, now: float) -> None:
        conn.busy = False
        self.inflight -= 1
        self.failures[kind] += 1
        self.unknown_seqs.append(conn.seq)
        self._count_error(conn.intended)

    def _count_error(self, intended: float) -> None:
        sec = int(intended - self.t0)
        if sec < len(self.err_by_sec):
            self.err_by_sec[sec] += 1

    def _revive(self, now: float) -> _Conn | None:
        """A closed connection whose retry time has come, reopened; None if none could be."""
        for conn in self._conns:
            if conn.sock is None and conn.retry_at <= now:
                if self._open(conn, now):
                    return conn
                return None  # the server refuses: do not try every slot for every arrival
        return None

    def _live(self) -> int:
        return sum(1 for c in self._conns if c.sock is not None)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        self._ep = select.epoll()
        self.t0 = t0 = perf_counter()
        schedule = self.schedule
        total = schedule.total
        time_of = schedule.time_of
        count_until = schedule.count_until
        request_for = self.request_for
        idle = self._idle
        by_fd = self._by_fd
        poll = self._ep.poll
        epfd = self._ep.fileno()
        keep = self.keep
        kept = self.kept
        statuses = self.statuses
        lat = self.latency_us
        ok_by_sec, err_by_sec, done_by_sec = self.ok_by_sec, self.err_by_sec, self.done_by_sec
        n_secs = len(lat)
        heads = _HEADS
        for _ in range(self.n_conns):
            conn = _Conn()
            self._conns.append(conn)
            if self._open(conn, t0):
                idle.append(conn)
        next_timeout_check = t0 + 0.1
        yielded_at = answered_at = t0
        seq = 0
        try:
            while True:
                now = perf_counter()
                progressed = False
                # 1. start every request that is due, on an idle connection
                due = seq if self.stop_requested else count_until(now - t0)
                while seq < due:
                    conn = None
                    while idle and conn is None:
                        conn = idle.pop()
                        if conn.sock is None:  # closed by the server while idle
                            conn = None
                    if conn is None:
                        conn = self._revive(now)
                        if conn is None:
                            if self._live() == 0:  # nothing to send on: the request fails at once
                                self.failures[REFUSED] += 1
                                self._count_error(t0 + time_of(seq))
                                seq += 1
                                progressed = True
                                continue
                            break  # every live connection is busy: the rest wait (their latency grows)
                    data = request_for(seq)
                    conn.seq = seq
                    conn.intended = t0 + time_of(seq)
                    conn.sent_at = now
                    conn.busy = True
                    self.inflight += 1
                    seq += 1
                    progressed = True
                    try:
                        sent = conn.sock.send(data)
                        if sent < len(data):
                            conn.sock.setblocking(True)  # rare (large batch bodies): finish it now
                            conn.sock.sendall(data[sent:])
                            conn.sock.setblocking(False)
                    except OSError:
                        self._drop(conn, now)
                self.issued = seq
                # 2. read every answer that is ready
                events = poll(0)
                if events:
                    progressed = True
                    now = answered_at = perf_counter()
                    done_sec = int(now - t0)
                    for fd, _ev in events:
                        conn = by_fd.get(fd)
                        if conn is None:
                            continue
                        try:
                            data = conn.sock.recv(_RECV)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            self._drop(conn, now)
                            continue
                        buf = conn.buf + data if conn.buf else data
                        close = False
                        while conn.busy:
                            head_end = buf.find(b"\r\n\r\n")
                            if head_end < 0:
                                break
                            head = buf[:head_end]
                            info = heads.get(head)
                            if info is None:
                                info = _parse_head(head)
                            status, length, closes = info
                            end = head_end + 4 + length
                            if len(buf) < end:
                                break
                            if status[0] == 49:  # 1xx interim answer
                                buf = buf[end:]
                                continue
                            if status in keep:
                                kept.append((conn.seq, status, buf[head_end + 4:end]))
                            buf = buf[end:]
                            statuses[status] = statuses.get(status, 0) + 1
                            self.completed += 1
                            intended = conn.intended
                            sec = int(intended - t0)
                            if sec < n_secs:
                                lat[sec].append(int((now - intended) * 1e6))
                                if status[0] == 50:
                                    ok_by_sec[sec] += 1
                                else:
                                    err_by_sec[sec] += 1
                            if done_sec < n_secs:
                                done_by_sec[done_sec] += 1
                            conn.busy = False
                            self.inflight -= 1
                            close = closes
                        conn.buf = buf
                        if close:
                            self._drop(conn, now)
                        elif not conn.busy:
                            idle.append(conn)
                # 3. time out requests that never got an answer
                if now >= next_timeout_check:
                    next_timeout_check = now + 0.1
                    limit = now - self.timeout_s
                    for conn in self._conns:
                        if conn.busy and conn.sent_at < limit:
                            self._fail_inflight(conn, TIMEOUT, now)
                            self._drop(conn, now)
                if (seq >= total or self.stop_requested) and not self.inflight:
                    break
                # 4. wait: for an answer, or until the next request is due. Sleeping costs a wake-up
                #    (expensive on a VM, and trio's timers have 1 ms grain), so while requests are
                #    queued or the next one is due within _SPIN_S the loop polls instead, yielding
                #    to other trio tasks every _SLICE_S.
                if seq < total and not self.stop_requested and (idle or self._live() < self.n_conns):
                    wait = t0 + time_of(seq) - perf_counter()
                elif seq < due and now - answered_at < _SPIN_S:
                    wait = 0.0  # queued behind busy connections while answers stream in: poll
                else:
                    wait = 0.1
                if progressed or wait < _SPIN_S:
                    if now - yielded_at >= _SLICE_S:
                        yielded_at = now
                        await checkpoint()
                    continue
                with trio.move_on_after(min(wait, 0.1)):
                    await wait_readable(epfd)
                yielded_at = perf_counter()
        finally:
            self.issued = seq
            self.finished = True
            for conn in self._conns:
                if conn.sock is not None:
                    if conn.busy:
                        self._fail_inflight(conn, BROKEN, perf_counter())
                    conn.sock.close()
                    conn.sock = None
            self._ep.close()
            self.duration_s = perf_counter() - t0
