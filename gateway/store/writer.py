"""The single LMDB writer: callers hand it operations, it applies many of them in one write
transaction and commits (with fsync) in a worker thread, then wakes every caller at once.

A batch closes when it holds `max_ops` operations, when `window_s` has passed since its first
operation, or as soon as a scheduling round passes without adding to it.
Nothing is reported written before its commit returned; a full map fails the whole batch with
StorageFull and writes none of it.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

import lmdb
import trio

log = logging.getLogger("gateway.store")

Op = Callable[[Any, dict, Any], Any]  # op(txn, dbs, arg) -> result


class StorageFull(Exception):
    """The LMDB map is full: nothing of the batch was written."""


class StorageError(Exception):
    """The commit failed for another reason: nothing of the batch was written."""


class _Batch:
    __slots__ = ("ops", "args", "results", "done", "error", "opened")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.args: list[Any] = []
        self.results: list[Any] = []
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.opened = 0.0


class Writer:
    def __init__(self, env: lmdb.Environment, dbs: dict, *, max_ops: int = 4096,
                 window_s: float = 0.002) -> None:
        self._env = env
        self._dbs = dbs
        self._max_ops = max_ops
        self._window_s = window_s
        self._batch = _Batch()
        self._closed: deque[_Batch] = deque()  # full batches waiting for their commit
        self._work = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.commits = 0
        self.ops_committed = 0

    async def write(self, op: Op, arg: Any = None) -> Any:
        """Run op(txn, dbs, arg) in the next commit and return its result once durable."""
        batch = self._enqueue(op, arg)
        index = len(batch.ops) - 1
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        result = batch.results[index]
        if isinstance(result, Exception):
            raise result
        return result

    def write_nowait(self, op: Op, arg: Any = None) -> _Batch:
        """Queue op without waiting; the returned batch's `done` event fires after its commit."""
        return self._enqueue(op, arg)

    def _enqueue(self, op: Op, arg: Any) -> _Batch:
        batch = self._batch
        if not batch.ops:
            batch.opened = trio.current_time()
            self._work.set()
        batch.ops.append(op)
        batch.args.append(arg)
        if len(batch.ops) >= self._max_ops:
            self._closed.append(batch)
            self._batch = _Batch()
        return batch

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._work.wait()
            if not self._closed:
                await self._linger()
            if self._closed:
                batch = self._closed.popleft()
            else:
                batch, self._batch = self._batch, _Batch()
            if not self._closed and not self._batch.ops:
                self._work = trio.Event()
            await self._commit(batch)

    async def _linger(self) -> None:
        """Let the tasks that are runnable now (woken by the same network events) join the batch:
        one scheduling round, and more only while each round still brings new operations, never
        past the window. Under load the batch has filled during the previous commit anyway."""
        deadline = self._batch.opened + self._window_s
        while not self._closed and trio.current_time() < deadline:
            before = len(self._batch.ops)
            await trio.sleep(0)
            if len(self._batch.ops) == before:
                return

    async def _commit(self, batch: _Batch) -> None:
        try:
            batch.results = await trio.to_thread.run_sync(
                self._apply, batch.ops, batch.args, limiter=self._limiter
            )
            self.commits += 1
            self.ops_committed += len(batch.ops)
        except lmdb.MapFullError:
            log.warning("LMDB map full: %d operations refused", len(batch.ops))
            batch.error = StorageFull()
        except lmdb.Error as exc:
            log.error("LMDB commit failed: %s", exc)
            batch.error = StorageError(str(exc))
        finally:
            batch.done.set()

    def _apply(self, ops: list[Op], args: list[Any]) -> list[Any]:
        dbs = self._dbs
        results: list[Any] = []
        append = results.append
        txn = self._env.begin(write=True)
        try:
            for op, arg in zip(ops, args):
                try:
                    append(op(txn, dbs, arg))
                except lmdb.MapFullError:
                    raise
                except lmdb.Error:
                    raise
                except Exception as exc:  # one bad operation must not sink the batch
                    log.exception("store operation %s failed", getattr(op, "__name__", op))
                    append(exc)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        return results
