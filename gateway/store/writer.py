"""The single LMDB writer: callers hand it operations, it applies many of them in one write
transaction and commits (with fsync) off the event loop, then wakes every caller at once.

A batch closes when it holds `max_ops` operations or, when the writer is idle, once a scheduling
round passes without adding to it and, while such waits have been paying, `window_s` after its first
operation that may not wait (see `_linger`). While a commit is running,
new operations gather in the next batch, which is applied as soon as the commit returns, so under
load the event loop and the disk work side by side instead of in turn. A `lazy` operation (the
network's acks and receipts, dispatch rounds) starts no commit of its own before `lazy_s` has
passed: it goes with the next commit that other work starts.

Who does what: LMDB ties the write lock to the thread that begins a write transaction, so a
long-lived writer thread begins, commits and aborts every write transaction. The operations
themselves (the puts) run on the event loop's thread, in order, while the writer thread waits
(other tasks get a turn between two ops every APPLY_SLICE_S): py-lmdb releases the GIL around every
put, and running them in a second thread on the same core turned each of them into a GIL hand-over.
Only the commit (and its fsync) runs beside the event loop. With each commit the thread begins the
next transaction and holds it for up to `hold_s`, so the next batch needs no round trip to the thread
to begin one; idle longer, the transaction is aborted and the write lock is free for other processes.
While holding has not been paying (work comes seldom), no transaction is begun after a commit.
Nothing is reported written before its commit returned; a full map fails the whole batch with
StorageFull and writes none of it. The thread answers each command through an eventfd that the
writer task waits on (`_Replies`).

A caller either awaits `write()` (its task parks until the commit), or hands over a callback with
`submit()`: the callbacks of a committed batch run on the event loop's thread while the next batch
commits (or at once when there is none), so answering a batch of requests wakes no task at all.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections import deque
from time import perf_counter
from typing import Any, Callable

import lmdb
import trio

from gateway.store.prealloc import Preallocator

log = logging.getLogger("gateway.store")

Op = Callable[[Any, dict, Any], Any]  # op(txn, dbs, arg) -> result
Done = Callable[[Any, "BaseException | None"], None]  # done(result, error): exactly one is meaningful


class StorageFull(Exception):
    """The LMDB map is full: nothing of the batch was written."""


class StorageError(Exception):
    """The commit failed for another reason: nothing of the batch was written."""


class _Batch:
    __slots__ = ("ops", "args", "results", "done", "error", "opened", "callbacks", "eager", "eager_ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.args: list[Any] = []
        self.results: list[Any] = []
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.opened = 0.0
        self.callbacks: list[tuple[int, Done]] = []  # (index of the op, its callback)
        self.eager: float | None = None  # when its first operation that may not wait came (trio time)
        self.eager_ops = 0  # operations that may not wait, and callers that joined one (`Writer.joined`)


class _Replies:
    """The writer thread's answers to the event loop: the thread appends one and bumps an eventfd;
    the writer task waits for that fd to be readable, so the event loop's own I/O wait wakes it.
    (`TrioToken.run_sync_soon` wakes the loop's system task first, which then wakes the writer
    task: one more scheduling batch, several milliseconds each when the loop is busy.) One command
    is outstanding at a time, so answers and commands pair up in order."""

    __slots__ = ("fd", "values")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.values: deque[Any] = deque()

    def put(self, value: Any) -> None:
        """From the writer thread."""
        self.values.append(value)
        os.eventfd_write(self.fd, 1)

    async def get(self) -> Any:
        values = self.values
        while not values:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:  # read already, with the answer taken before this wait
                pass
        return values.popleft()

    def close(self) -> None:
        os.close(self.fd)


# An idle writer waits out the group-commit window while such waits pay (see Writer._linger): the
# moving share of waits that grew their batch enough (`_waited`; weight of the latest), the share
# below which it stops, and after how many idle batches without a wait it tries once more.
WAIT_WEIGHT = 0.25
WAIT_PAYS = 0.2
WAIT_TRIAL_EVERY = 32
APPLY_SLICE_S = 0.002  # ops applied on the event loop before other tasks get a turn
HOLD_S = 0.005  # a transaction begun after a commit waits this long for work (see Writer.run)
HOLD_PAYS = 0.5  # ... while at least this moving share of recent gaps after a commit were shorter

# Commands to the writer thread.
_BEGIN, _COMMIT, _RESTART, _ABORT, _STOP = range(5)


class Writer:
    def __init__(self, env: lmdb.Environment, dbs: dict, *, max_ops: int = 4096,
                 window_s: float = 0.002, lazy_s: float = 0.0, hold_s: float = HOLD_S,
                 on_commit: Callable[[float], None] | None = None,
                 prealloc: Preallocator | None = None) -> None:
        self._env = env
        # keeps the data file ahead of the data (store/prealloc.py), between commits in the thread
        self.prealloc = prealloc
        self._psize = env.stat()["psize"]
        self._dbs = dbs
        # Called on the event loop after each commit with the seconds from handing the batch to the
        # thread to the loop seeing it durable: the fsync and the loop's own delay to notice.
        self._on_commit = on_commit
        self._max_ops = max_ops
        self._window_s = window_s
        self._lazy_s = lazy_s  # how long `lazy` operations wait for a commit that happens anyway
        # How long a write transaction begun right after a commit waits for work before it is
        # given back (0: begin only for work already waiting).
        self._hold_s = hold_s
        # Whether holding the next transaction has been paying: the moving share of recent gaps
        # between a commit and the next work that were shorter than hold_s (weights as for waits).
        # While it does not pay (a few requests a second and less), the thread begins no
        # transaction after a commit: each one held was given back hold_s later, a round trip to
        # the thread and a timer for nothing.
        self._hold_score = 1.0
        self._idle_since = 0.0  # trio time the last commit returned with nothing waiting
        self._batch = _Batch()
        self._closed: deque[_Batch] = deque()  # full batches waiting for their commit
        self._work = trio.Event()
        self._filled = trio.Event()  # a batch closed full (ends `_linger` before its window)
        self._wait_score = 1.0  # moving share of recent window waits that grew their batch enough
        self._waits_skipped = 0
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies: _Replies | None = None
        self._answered: deque[_Batch] = deque()  # committed batches whose callbacks have not run yet
        self.commits = 0
        self.failing: BaseException | None = None  # the last batch that failed, and when (perf_counter)
        self.failed_at = 0.0
        self.ops_committed = 0

    async def write(self, op: Op, arg: Any = None, *, lazy: bool = False) -> Any:
        """Run op(txn, dbs, arg) in the next commit and return its result once durable. A `lazy`
        operation does not start a commit of its own before `lazy_s` has passed: it goes with the
        next one that anything else starts (bookkeeping nobody is waiting on, such as the network's
        acks and receipts, rides along with accepts instead of costing an fsync each)."""
        batch, index = self._enqueue(op, arg, lazy)
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        result = batch.results[index]
        if isinstance(result, Exception):
            raise result
        return result

    def submit(self, op: Op, arg: Any, done: Done, *, lazy: bool = False) -> _Batch:
        """Run op(txn, dbs, arg) in the next commit, then call done(result, None) on the event loop
        once it is durable, or done(None, error) if it failed (StorageFull, StorageError, or the
        exception the op raised). `done` must not block; an exception from it is logged. `lazy`
        as for `write`. Returns the op's batch, for `joined`."""
        batch, index = self._enqueue(op, arg, lazy)
        batch.callbacks.append((index, done))
        return batch

    def write_nowait(self, op: Op, arg: Any = None) -> _Batch:
        """Queue op without waiting; the returned batch's `done` event fires after its commit."""
        return self._enqueue(op, arg)[0]

    @staticmethod
    def joined(batch: _Batch) -> None:
        """One more caller waits on an operation already in `batch` (what `submit` returned; a group
        of accepts took another message): counted like an operation of its own, in the weight that
        decides whether waiting out the group-commit window pays (see `_linger`)."""
        batch.eager_ops += 1

    def _enqueue(self, op: Op, arg: Any, lazy: bool = False) -> tuple[_Batch, int]:
        batch = self._batch
        ops = batch.ops
        if not ops:
            batch.opened = trio.current_time()
            self._work.set()  # (for a lazy one: the writer task sets its deadline)
        if not lazy:
            batch.eager_ops += 1
            if batch.eager is None:
                batch.eager = batch.opened if not ops else trio.current_time()
                self._work.set()
        ops.append(op)
        batch.args.append(arg)
        index = len(ops) - 1
        if index + 1 >= self._max_ops:
            self._closed.append(batch)
            self._batch = _Batch()
            self._filled.set()
        return batch, index

    def _has_work(self) -> bool:
        """Work that may not wait (lazy operations alone may). Read by the writer thread as a hint;
        only the event loop's thread ever takes work away, and it is waiting for that thread's
        answer when the hint is read."""
        return bool(self._closed) or self._batch.eager is not None

    async def _until_work(self, until: float = math.inf) -> bool:
        """Until there is work to commit: an operation that may not wait, or lazy ones whose
        `lazy_s` has passed (True), or until `until` (trio time) has passed first (False)."""
        while not self._has_work():
            self._work = trio.Event()
            batch = self._batch
            due = until if not batch.ops else min(until, batch.opened + self._lazy_s)
            if trio.current_time() >= due:
                return bool(batch.ops) and due < until
            if due == math.inf:
                await self._work.wait()
            else:
                with trio.move_on_at(due):
                    await self._work.wait()
        return True

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._replies = _Replies()
        thread = threading.Thread(target=self._thread_main, name="gateway-writer", daemon=True)
        thread.start()
        task_status.started()
        txn = None  # the write transaction the thread began with the last commit, if any
        try:
            while True:
                idle = not self._has_work()
                if idle:
                    self._idle_since = trio.current_time()
                if txn is not None and idle:
                    # The thread began this transaction right after the last commit, so that the
                    # next batch needs no round trip to begin one: it waits for work, a while.
                    self._answer()
                    if await self._until_work(trio.current_time() + self._hold_s):
                        self._held(True)
                        if not self._closed:
                            await self._linger()
                    else:  # idle: give the write lock back (other processes may want to write)
                        self._held(False)
                        await self._call(_ABORT)
                        txn = None
                elif txn is None and idle:
                    self._answer()  # no commit to overlap with: answer now
                    await self._until_work()
                    self._held(trio.current_time() - self._idle_since < self._hold_s)
                if txn is None:
                    self._answer()
                    await self._until_work()
                    if not self._closed:
                        await self._linger()
                    txn = await self._call(_BEGIN)
                    if isinstance(txn, Exception):
                        self._fail(self._next(), StorageError(str(txn)))
                        txn = None
                        continue
                txn = await self._commit(self._next(), txn)
        finally:
            self._answer()  # committed batches get their answers even when stopping
            self._requests.put((_STOP, None))
            # A commit in flight must finish before the environment may be closed.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
            self._replies.close()

    def _next(self) -> _Batch:
        """The next batch to commit: a full one first, else the open one (which closes now)."""
        if self._closed:
            return self._closed.popleft()
        batch = self._batch
        self._batch = _Batch()
        return batch

    async def _linger(self) -> None:
        """Hold the open batch while the writer is idle, so that more operations share its fsync:
        first the tasks runnable now (woken by the same network events), rounds while each adds
        operations; then, while waiting has been paying, the rest of `window_s` from the batch's
        first operation that may not wait (or until it is full). Under load each batch is applied as
        soon as the previous commit returned, its window behind it, so this only runs when the
        writer was idle. A window of 0 commits at once."""
        batch = self._batch
        deadline = (batch.opened if batch.eager is None else batch.eager) + self._window_s
        while True:
            if self._closed or trio.current_time() >= deadline:
                return
            before = len(batch.ops)
            await trio.sleep(0)
            if len(batch.ops) == before:
                break
        # lazy operations alone have waited `lazy_s` already; nothing is left of the window
        if batch.eager is None or self._closed or trio.current_time() >= deadline or not self._window_pays():
            return
        before = batch.eager_ops
        self._filled = trio.Event()
        with trio.move_on_at(deadline):
            await self._filled.wait()
        self._waited(before, batch.eager_ops)

    def _held(self, paid: bool) -> None:
        """Scores one gap after a commit: whether work came within hold_s (a transaction held
        for it saved the round trip to begin one)."""
        self._hold_score = (1 - WAIT_WEIGHT) * self._hold_score + (WAIT_WEIGHT if paid else 0.0)

    def _window_pays(self) -> bool:
        """Whether to wait out the window: as long as recent waits grew their batches, and once in
        WAIT_TRIAL_EVERY idle batches when they did not (requests spread over time gain; a cohort of
        clients that all wait for this commit has already arrived, and waiting would only delay it)."""
        if self._wait_score >= WAIT_PAYS:
            return True
        self._waits_skipped += 1
        if self._waits_skipped >= WAIT_TRIAL_EVERY:
            self._waits_skipped = 0
            return True
        return False

    def _waited(self, before: int, after: int) -> None:
        """Scores a wait by the callers it added (operations that may not wait, and `joined` ones): at
        least one, and at least a quarter of those the batch held (a cohort's stragglers do not count)."""
        paid = after - before >= max(1, -(-before // 4))
        self._wait_score = (1 - WAIT_WEIGHT) * self._wait_score + (WAIT_WEIGHT if paid else 0.0)

    async def _call(self, command: int, arg: Any = None) -> Any:
        """Hand a command to the writer thread and wait for its answer."""
        self._post(command, arg)
        return await self._wait()

    def _post(self, command: int, arg: Any = None) -> None:
        """Hand a command to the writer thread; `_wait` for its answer before the next command."""
        self._requests.put((command, arg))

    async def _wait(self) -> Any:
        """Never cancelled midway: the thread would go on with a transaction nobody waits for."""
        with trio.CancelScope(shield=True):
            return await self._replies.get()

    def _answer(self) -> None:
        """Run the callbacks of the committed batches (in commit order, each op's in queue order)."""
        answered = self._answered
        while answered:
            batch = answered.popleft()
            results, error = batch.results, batch.error
            for index, done in batch.callbacks:
                if error is not None:
                    result, failure = None, error
                else:
                    result = results[index]
                    result, failure = (None, result) if isinstance(result, Exception) else (result, None)
                try:
                    done(result, failure)
                except Exception:
                    log.exception("callback of store operation %s failed",
                                  getattr(batch.ops[index], "__name__", batch.ops[index]))

    async def _commit(self, batch: _Batch, txn) -> Any:
        """Apply the batch in `txn` and commit it; returns the next transaction if the thread
        began one for work that is already waiting, else None."""
        failed: dict[int, Exception] = {}
        while True:
            try:
                with trio.CancelScope(shield=True):  # the thread holds the transaction open
                    results = await self._apply(txn, batch.ops, batch.args, failed)
            except lmdb.MapFullError:
                log.warning("LMDB map full: %d operations refused", len(batch.ops))
                await self._call(_ABORT)
                self._fail(batch, StorageFull())
                return None
            except BaseException as exc:  # an lmdb error: nothing of the batch is kept
                if isinstance(exc, lmdb.Error):
                    log.error("LMDB write failed: %s", exc)
                else:
                    log.exception("group commit failed")
                await self._call(_ABORT)
                self._fail(batch, StorageError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                return None
            if results is not None:
                break
            # An op failed: start over without it, so it leaves none of its writes behind.
            txn = await self._call(_RESTART)
            if isinstance(txn, Exception):
                self._fail(batch, StorageError(str(txn)))
                return None
        posted = perf_counter()
        self._post(_COMMIT)
        self._answer()  # the batch committed before answers while this one commits
        error, next_txn = await self._wait()
        if error is None:
            if self._on_commit is not None:
                self._on_commit(perf_counter() - posted)
            self.commits += 1
            self.ops_committed += len(batch.ops)
            batch.results = results
            batch.done.set()
            if batch.callbacks:
                self._answered.append(batch)
        else:
            self._fail(batch, error)
        return next_txn

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        self.failing, self.failed_at = error, perf_counter()  # (readiness reports it for a while)
        batch.error = error
        batch.done.set()
        if batch.callbacks:
            self._answered.append(batch)
            self._answer()

    async def _apply(self, txn, ops: list[Op], args: list[Any], failed: dict[int, Exception]) -> list | None:
        """Run every op in order; None if an op failed (it is recorded in `failed`). lmdb errors
        propagate: they fail the whole batch. Between two ops, once APPLY_SLICE_S has gone by, the
        other tasks get a turn (a batch of a dispatch round, receipts and accepts can take tens of
        milliseconds): new operations meanwhile gather in the next batch, and nothing of this one
        is visible to readers before its commit."""
        dbs = self._dbs
        results: list[Any] = []
        append = results.append
        slice_end = perf_counter() + APPLY_SLICE_S
        for i, (op, arg) in enumerate(zip(ops, args)):
            if i and perf_counter() > slice_end:
                await trio.lowlevel.checkpoint()
                slice_end = perf_counter() + APPLY_SLICE_S
            if i in failed:
                append(failed[i])
                continue
            try:
                append(op(txn, dbs, arg))
            except lmdb.Error:
                raise
            except Exception as exc:
                log.exception("store operation %s failed", getattr(op, "__name__", op))
                failed[i] = exc
                return None
        return results

    # -- the writer thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        env, requests, answer = self._env, self._requests, self._replies.put
        if self.prealloc is not None:
            self.prealloc.open()
        txn = None
        while True:
            command, _ = requests.get()
            if command == _STOP:
                if txn is not None:
                    txn.abort()
                if self.prealloc is not None:
                    self.prealloc.close()
                return
            try:
                if command == _BEGIN:
                    txn = value = self._begin()
                elif command == _COMMIT:
                    value = self._commit_in_thread(txn)
                    txn = value[1]
                elif command == _RESTART:
                    txn.abort()
                    txn = None
                    txn = value = env.begin(write=True)
                else:  # _ABORT
                    txn.abort()
                    txn = value = None
            except Exception as exc:  # begin failed: the event loop fails the batch
                log.error("LMDB transaction could not be started: %s", exc)
                value = exc
            answer(value)

    def _commit_in_thread(self, txn) -> tuple[BaseException | None, Any]:
        try:
            txn.commit()
        except lmdb.MapFullError:
            log.warning("LMDB map full at commit")
            return StorageFull(), None
        except lmdb.Error as exc:
            log.error("LMDB commit failed: %s", exc)
            return StorageError(str(exc)), None
        if (self._hold_s <= 0 or self._hold_score < HOLD_PAYS) and not self._has_work():
            return None, None
        # The next batch gets its transaction without another round trip: work that arrived during
        # the commit at once, other work while the event loop holds it (Writer.run).
        try:
            return None, self._begin()
        except lmdb.Error:
            return None, None  # the event loop asks again with _BEGIN and fails that batch cleanly

    def _begin(self):
        """A write transaction for the next batch; the data file is topped up while it holds the
        write lock and has allocated nothing (see store/prealloc.py)."""
        txn = self._env.begin(write=True)
        if self.prealloc is not None:
            self.prealloc.top_up(self._env, self._psize)
        return txn


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


async def write_all_until_stored(writer: Writer, op: Op, args: list, pause_s: float = 1.0, *,
                                 lazy: bool = False) -> list:
    """`write_until_stored` for several operations at once: queued together and in order (one batch
    holds them as far as `max_ops` allows, and the writer gives other tasks a turn between them),
    their results in the same order. For work too large to apply in one step, cut into pieces."""
    results: list = [None] * len(args)
    todo = list(range(len(args)))
    while todo:
        outcome: dict[int, BaseException | None] = {}
        finished = trio.Event()
        expected = len(todo)

        def done_for(i: int) -> Done:
            def done(result: Any, error: BaseException | None) -> None:
                results[i] = result
                outcome[i] = error
                if len(outcome) == expected:
                    finished.set()
            return done

        for i in todo:
            writer.submit(op, args[i], done_for(i), lazy=lazy)
        await finished.wait()
        failed = [i for i in todo if outcome[i] is not None]
        for i in failed:
            if not isinstance(outcome[i], (StorageFull, StorageError)):
                raise outcome[i]
        if failed:
            log.warning("store refused %d of %d %s; retrying in %.1f s", len(failed), len(todo),
                        getattr(op, "__name__", op), pause_s)
            await trio.sleep(pause_s)
        todo = failed
    return results
