"""Bundle requests in flight: one BundleRequest frame per dispatch round, its replies (possibly
several frames) gathered until every number is answered, or a timeout.

It owns the request ids and the waiting; the caller sends the frame and hands replies in.
"""
from __future__ import annotations

import trio

from gateway.network.frames import BundleReply, BundleRequest


class BundleTimeout(Exception):
    """The network did not answer every number in time (or the connection was replaced)."""


class _Wait:
    __slots__ = ("numbers", "bundles", "unknown", "done", "failed")

    def __init__(self, numbers: list[str]) -> None:
        self.numbers = set(numbers)
        self.bundles: dict[str, bytes] = {}
        self.unknown: set[str] = set()
        self.done = trio.Event()
        self.failed = False


class BundleRequests:
    def __init__(self) -> None:
        self._next = 1
        self._waiting: dict[int, _Wait] = {}

    def request(self, numbers: list[str]) -> tuple[int, BundleRequest]:
        req_id = self._next
        self._next += 1
        self._waiting[req_id] = _Wait(numbers)
        return req_id, BundleRequest(req_id, numbers)

    def on_reply(self, frame: BundleReply) -> None:
        wait = self._waiting.get(frame.id)
        if wait is None:
            return  # late (timed out) or unsolicited: ignored
        for number, bundle in frame.bundles:
            if number in wait.numbers:
                wait.bundles[number] = bundle
        wait.unknown.update(n for n in frame.unknown if n in wait.numbers)
        if len(wait.bundles) + len(wait.unknown) >= len(wait.numbers):
            wait.done.set()

    def forget(self, req_id: int) -> None:
        self._waiting.pop(req_id, None)

    def fail_all(self) -> None:
        for wait in self._waiting.values():
            wait.failed = True
            wait.done.set()

    async def wait(self, req_id: int, timeout_s: float) -> tuple[dict[str, bytes], set[str]]:
        wait = self._waiting[req_id]
        try:
            with trio.move_on_after(timeout_s):
                await wait.done.wait()
        finally:
            del self._waiting[req_id]
        if wait.failed or not wait.done.is_set():
            raise BundleTimeout(f"bundle request {req_id} not answered")
        return wait.bundles, wait.unknown
