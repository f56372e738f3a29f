"""The single LMDB writer: callers hand it operations, it applies many of them in one write
transaction and commits (with fsync) in its own long-lived thread, then wakes every caller at once.

A batch closes when it holds `max_ops` operations, when `window_s` has passed since its first
operation, or as soon as a scheduling round passes without adding to it. While a commit is running,
new operations gather in the next batch; the writer thread starts that one as soon as the commit
returns, so under load the event loop and the disk work side by side instead of in turn.
Nothing is reported written before its commit returned; a full map fails the whole batch with
StorageFull and writes none of it.
"""
from __future__ import annotations

import logging
import threading
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
        # Shared with the writer thread, always under _lock: the open batch, _closed, _busy and
        # _stopping. _busy: the thread holds a batch and will take the next one itself.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._handed: _Batch | None = None  # a batch handed to the idle thread
        self._busy = False
        self._stopping = False
        self._token: trio.lowlevel.TrioToken | None = None
        self.commits = 0
        self.ops_committed = 0

    async def write(self, op: Op, arg: Any = None) -> Any:
        """Run op(txn, dbs, arg) in the next commit and return its result once durable."""
        batch, index = self._enqueue(op, arg)
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        result = batch.results[index]
        if isinstance(result, Exception):
            raise result
        return result

    def write_nowait(self, op: Op, arg: Any = None) -> _Batch:
        """Queue op without waiting; the returned batch's `done` event fires after its commit."""
        return self._enqueue(op, arg)[0]

    def _enqueue(self, op: Op, arg: Any) -> tuple[_Batch, int]:
        with self._lock:
            batch = self._batch
            ops = batch.ops
            if not ops:
                batch.opened = trio.current_time()
                if not self._busy:
                    self._work.set()
            ops.append(op)
            batch.args.append(arg)
            index = len(ops) - 1
            if index + 1 >= self._max_ops:
                self._closed.append(batch)
                self._batch = _Batch()
        return batch, index

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with self._lock:
            self._stopping = False
        thread = threading.Thread(target=self._thread_main, name="gateway-writer", daemon=True)
        thread.start()
        task_status.started()
        try:
            while True:
                await self._work.wait()
                if not self._closed:
                    await self._linger()
                with self._lock:
                    self._work = trio.Event()
                    if self._busy:  # the thread took the batch itself meanwhile
                        continue
                    batch = self._next_locked()
                    if batch is None:
                        continue
                    self._busy = True
                    self._handed = batch
                    self._wake.notify()
        finally:
            with self._lock:
                self._stopping = True
                self._wake.notify()
            # A commit in flight must finish before the environment may be closed.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)

    def _next_locked(self) -> _Batch | None:
        """The next batch to commit (a full one first), or None; caller holds _lock."""
        if self._closed:
            return self._closed.popleft()
        batch = self._batch
        if not batch.ops:
            return None
        self._batch = _Batch()
        return batch

    async def _linger(self) -> None:
        """Let the tasks that are runnable now (woken by the same network events) join the batch:
        one scheduling round, and more only while each round still brings new operations, never
        past the window. Under load the writer thread takes each batch as soon as the previous
        commit returned, so this only runs when the writer was idle."""
        deadline = self._batch.opened + self._window_s
        while not self._closed and trio.current_time() < deadline:
            before = len(self._batch.ops)
            await trio.sleep(0)
            if len(self._batch.ops) == before:
                return

    # -- the writer thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        lock, wake = self._lock, self._wake
        while True:
            with lock:
                while self._handed is None and not self._stopping:
                    wake.wait()
                if self._stopping:
                    self._busy = False
                    return
                batch, self._handed = self._handed, None
            while batch is not None:
                self._commit(batch)
                with lock:
                    batch = None if self._stopping else self._next_locked()
                    if batch is None:
                        self._busy = False

    def _commit(self, batch: _Batch) -> None:
        try:
            batch.results = self._apply(batch.ops, batch.args)
            self.commits += 1
            self.ops_committed += len(batch.ops)
        except lmdb.MapFullError:
            log.warning("LMDB map full: %d operations refused", len(batch.ops))
            batch.error = StorageFull()
        except lmdb.Error as exc:
            log.error("LMDB commit failed: %s", exc)
            batch.error = StorageError(str(exc))
        except BaseException as exc:  # never leave callers waiting
            log.exception("group commit failed")
            batch.error = StorageError(str(exc))
        try:
            self._token.run_sync_soon(batch.done.set)
        except trio.RunFinishedError:
            pass

    def _apply(self, ops: list[Op], args: list[Any]) -> list[Any]:
        """Apply every op in one transaction and commit. An op that raises is left out whole: the
        transaction is aborted and the batch applied again without it, so a failing op never
        leaves half its writes behind (this only costs anything when an op fails)."""
        failed: dict[int, Exception] = {}
        while True:
            results: list[Any] = []
            append = results.append
            txn = self._env.begin(write=True)
            try:
                for i, (op, arg) in enumerate(zip(ops, args)):
                    if i in failed:
                        append(failed[i])
                        continue
                    try:
                        append(op(txn, self._dbs, arg))
                    except lmdb.Error:
                        raise
                    except Exception as exc:
                        log.exception("store operation %s failed", getattr(op, "__name__", op))
                        failed[i] = exc
                        break
                else:
                    txn.commit()
                    return results
                txn.abort()
            except BaseException:
                txn.abort()
                raise


async def write_until_stored(writer: Writer, op: Op, arg: Any = None, pause_s: float = 1.0) -> Any:
    """For work that must not be dropped (network answers, webhook bookkeeping): wait out a full
    or failing store and try again, instead of losing the operation or crashing the task."""
    while True:
        try:
            return await writer.write(op, arg)
        except (StorageFull, StorageError) as exc:
            log.warning("store refused %s (%s); retrying in %.1f s",
                        getattr(op, "__name__", op), type(exc).__name__, pause_s)
            await trio.sleep(pause_s)
