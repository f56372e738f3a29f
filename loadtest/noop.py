"""A no-op HTTP/1.1 responder for measuring the load generator's own ceiling (`python -m loadtest.noop`).

It frames requests by Content-Length and answers each with a canned 202 shaped like the gateway's,
on plain epoll so that it is never the bottleneck. It must never be used for anything but calibration;
it binds 127.0.0.1 only and exits when its parent closes its stdin.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import threading

_BODY = b'{"id":"01NOOP0000000000000000000A","status":"accepted"}'
_ANSWER = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(_BODY), _BODY))


def _request_end(buf: bytes, start: int) -> int:
    """End offset of the request starting at `start`, or -1 while it is incomplete."""
    head_end = buf.find(b"\r\n\r\n", start)
    if head_end < 0:
        return -1
    head = buf[start:head_end].lower()
    pos = head.find(b"\r\ncontent-length:")
    length = 0
    if pos >= 0:
        end = head.find(b"\r\n", pos + 2)
        length = int(head[pos + 17:end if end >= 0 else len(head)])
    total = head_end + 4 + length
    return total if total <= len(buf) else -1


def serve(lsock: socket.socket) -> None:
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    while True:
        for fd, _ev in ep.poll():
            if fd == lsock.fileno():
                try:
                    sock, _ = lsock.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[sock.fileno()] = sock
                bufs[sock.fileno()] = b""
                ep.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = socks[fd]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                socks.pop(fd).close()
                bufs.pop(fd, None)
                continue
            buf = bufs[fd] + data
            pos = answers = 0
            while (end := _request_end(buf, pos)) >= 0:
                pos = end
                answers += 1
            bufs[fd] = buf[pos:]
            if answers:
                try:
                    sock.sendall(_ANSWER * answers)
                except OSError:
                    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="no-op HTTP responder (generator calibration)")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    lsock = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(f"noop listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    threading.Thread(target=serve, args=(lsock,), daemon=True).start()
    sys.stdin.read()  # the parent closing our stdin (or dying) ends us
    return 0


if __name__ == "__main__":
    sys.exit(main())
