"""The sender key books of a running gateway: loaded from (or created in) the key directory at
start and on reload, rotated on their period, republished to the network after every connect,
and their one-time prekey pools refilled when the network reports them low.

`Keyring` is the core: it decides and changes the books in memory, and returns `Publish` jobs
(a book to write, then the frame that may go once it is written) without writing or sending
anything; the key files are written only at start (`ensure`). `KeyService` is its trio shell: it
writes the files in a worker thread (an fsync'ed key file takes 1-3 ms of disk time, which the
event loop must not wait out), sends the frames after, and makes one-time prekeys ahead of need
in idle time (an X25519 key takes ~45-60 us: a pool of 100 made on the spot held the event loop
for 5-9 ms at every refill the network asked for).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, NamedTuple

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.crypto.agreement import EphemeralKeyPool
from gateway.crypto.identity import IdentityKeyPair
from gateway.e2e import keys as K
from gateway.network.frames import PrekeyCount, PublishKeys
from gateway.threads import yield_to_loop

log = logging.getLogger("gateway.e2e")

SPARE_SLICE = 8  # one-time prekeys made per step of idle time (~0.4-0.5 ms of the event loop)


class Publish(NamedTuple):
    """Write `book`'s key file, then send `frame` (None: only the file): the private halves of
    published keys are always on disk before their public halves leave."""
    book: K.SenderKeys
    frame: PublishKeys | None


class Keyring:
    def __init__(self, key_dir: str, *, pool: int, low: int, rotation_ms: int, grace_ms: int) -> None:
        self.key_dir = key_dir
        self.pool = pool
        self.low = low
        self.rotation_ms = rotation_ms
        self.grace_ms = grace_ms
        self._books: dict[str, K.SenderKeys] = {}
        self._unpublished: set[str] = set()
        self._unsaved: set[str] = set()  # senders whose last key file write failed (logged once)
        self._refilling: set[str] = set()  # senders whose refill is not written and sent yet
        # One-time prekeys made ahead of need (KeyService fills it in idle time); a book takes
        # from it, and an empty pool makes a key on the spot.
        self.spare = EphemeralKeyPool(2 * pool)

    def ensure(self, numbers, now_ms: int) -> list[str]:
        """Load or create the key book of every number; returns the numbers created now.
        Raises KeyFileError for an unreadable file (the gateway must not invent a new identity
        over an existing one). Blocks for key generation and file writes: at start; a running
        gateway goes through KeyService.ensure."""
        return self.adopt([K.load_or_create(self.key_dir, n, now_ms, self.pool) for n in self.missing(numbers)])

    def missing(self, numbers) -> list[str]:
        """The numbers that have no key book yet, each once."""
        return [n for n in dict.fromkeys(numbers) if n not in self._books]

    def adopt(self, loaded: list[tuple[K.SenderKeys, bool]]) -> list[str]:
        """Take in books loaded or created (and saved) elsewhere, each (book, created); they are
        published with the next `tick`. Returns the numbers created."""
        created = []
        for book, made in loaded:
            if book.number in self._books:
                continue
            self._books[book.number] = book
            self._unpublished.add(book.number)
            if made:
                created.append(book.number)
                log.info("identity key created for sender %s", book.number)
        return created

    def identity(self, number: str) -> IdentityKeyPair | None:
        book = self._books.get(number)
        return None if book is None else book.identity

    def book(self, number: str) -> K.SenderKeys | None:
        return self._books.get(number)

    @property
    def numbers(self) -> list[str]:
        return list(self._books)

    def take_all(self) -> list[K.SenderKeys]:
        """Every book, each to be published afresh now (after a connect: the network may have
        restarted and forgotten them; KeyService.publish_all); nothing is left waiting for `tick`."""
        self._unpublished.clear()
        return list(self._books.values())

    def take_unpublished(self) -> list[K.SenderKeys]:
        """The books to publish afresh: senders added since the last connect, or whose key file
        could not be written."""
        waiting, self._unpublished = sorted(self._unpublished), set()
        return [self._books[n] for n in waiting]

    def publish_fresh(self, book: K.SenderKeys) -> Publish:
        """The bundle and a fresh pool of one-time prekeys that replaces the network's pool. Never
        the keys published before: the network may already have handed them to customers, and a
        one-time prekey must serve one session only. Their private halves stay in the key book
        (a customer may still use one) until they age out of its bounded store."""
        fresh = book.add_one_time(self.pool, self.spare.take)
        book.note_network_left(self.pool)
        self._refilling.discard(book.number)  # this pool replaces whatever a refill in flight adds
        return Publish(book, book.publish_frame(fresh, replace=True))

    def tick(self, now_ms: int) -> list[Publish]:
        """`rotate`, after publishing afresh the books `take_unpublished` names."""
        return [self.publish_fresh(book) for book in self.take_unpublished()] + self.rotate(now_ms)

    def rotate(self, now_ms: int) -> list[Publish]:
        """Rotate the signed and PQ prekeys that are due (and drop retired ones past their grace);
        the jobs that write those books and publish the new bundles."""
        jobs = []
        for book in self._books.values():
            current = book.signed_prekey_ids[-1]
            if book.rotate_if_due(now_ms, self.rotation_ms, self.grace_ms):
                rotated = book.signed_prekey_ids[-1] != current
                if rotated:
                    log.info("signed prekey of %s rotated", book.number)
                jobs.append(Publish(book, book.publish_frame() if rotated else None))
        return jobs

    def on_prekey_count(self, frame: PrekeyCount) -> list[Publish]:
        """A refill when the network's pool of the sender's one-time prekeys fell below `low`.
        While one is on its way (not yet written and sent), counts are ignored: they describe the
        network's pool before it arrives, and the network counts again once it has it."""
        book = self._books.get(frame.sender)
        if book is None or frame.left < 0 or frame.sender in self._refilling:
            return []
        book.note_network_left(frame.left)
        fresh = book.refill(self.pool, self.low, self.spare.take)
        if not fresh:
            return []
        self._refilling.add(book.number)
        return [Publish(book, book.publish_frame(fresh))]

    def used_one_time(self, sender: str, key_ids) -> list[Publish]:
        """Forget one-time prekeys that new inbound sessions used (the store records them as used
        first, so a crash before the file is written cannot let one serve twice)."""
        book = self._books.get(sender)
        if book is None or not book.drop_one_time(key_ids):
            return []
        return [Publish(book, None)]

    def written(self, job: Publish, error: OSError | None) -> bool:
        """After the job's key file write: whether its frame may be sent. A file the disk refused
        (full, read-only) is logged once until it is written again; its sender's new keys stay
        unpublished and the next `tick` publishes it afresh. The gateway goes on."""
        number = job.book.number
        if job.frame is not None and not job.frame.replace:
            self._refilling.discard(number)
        if error is not None:
            if number not in self._unsaved:  # once until it is written again: ticks retry every second
                self._unsaved.add(number)
                log.warning("key file of sender %s not written (%s): its new keys wait to be published",
                            number, error.strerror or error)
            if job.frame is not None:
                self._unpublished.add(number)
            return False
        if number in self._unsaved:
            self._unsaved.discard(number)
            log.info("key file of sender %s written again", number)
        return True


def _made_in_turn() -> X25519PrivateKey:
    """A fresh key, in a worker thread, after letting the event loop's thread go first."""
    yield_to_loop()
    return X25519PrivateKey.generate()


class KeyService:
    """The keyring's trio shell. Key files are written in a worker thread, one at a time (each
    book once per round, at its latest state), and a job's frame goes only after its file is
    written. Jobs come from `submit` (a refill the network asked for, prekeys inbound sessions
    used), which the service's task writes and sends with `send`, or from callers that await
    `write` and send themselves (a connect, rotation). Between jobs it fills the keyring's spare
    one-time prekeys, SPARE_SLICE keys a step."""

    def __init__(self, ring: Keyring, send: Callable[[list[PublishKeys]], Awaitable[None]]) -> None:
        self.ring = ring
        self._send = send
        self._lock = trio.Lock()  # one writer per key file (they share a temporary name)
        self._jobs: list[Publish] = []
        self._wake = trio.Event()
        self.files_written = 0

    def submit(self, jobs: list[Publish]) -> None:
        if jobs:
            self._jobs += jobs
            self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while self._jobs:
                jobs, self._jobs = self._jobs, []
                frames = await self.write(jobs)
                if frames:
                    await self._send(frames)
            await self._fill(self.ring.spare.capacity, until_jobs=True)
            if not self._jobs:
                await self._wake.wait()
            self._wake = trio.Event()

    async def write(self, jobs: list[Publish]) -> list[PublishKeys]:
        """Write the jobs' books; the frames that may go now, in job order."""
        books = {id(job.book): job.book for job in jobs}
        errors: dict[int, OSError | None] = {}
        async with self._lock:
            for key, book in books.items():
                raw = book.to_bytes()  # on the event loop: the book is only ever changed there
                try:
                    await trio.to_thread.run_sync(K.write_file, self.ring.key_dir, book.number, raw)
                except OSError as exc:
                    errors[key] = exc
                else:
                    errors[key] = None
                    self.files_written += 1
        return [job.frame for job in jobs if self.ring.written(job, errors[id(job.book)]) and job.frame is not None]

    async def ensure(self, numbers, now_ms: int) -> list[str]:
        """`Keyring.ensure` for a running gateway (a reload that adds senders): the books are
        loaded or created and saved in a worker thread that yields to the event loop between two
        keys (a new book took the loop 10-27 ms here). Raises as `Keyring.ensure`, adopting none."""
        todo = self.ring.missing(numbers)
        if not todo:
            return []
        ring = self.ring

        def load_all() -> list[tuple[K.SenderKeys, bool]]:
            return [K.load_or_create(ring.key_dir, n, now_ms, ring.pool, _made_in_turn) for n in todo]

        async with self._lock:  # never beside another write of a key file
            loaded = await trio.to_thread.run_sync(load_all)
        return ring.adopt(loaded)

    async def publish_all(self) -> list[PublishKeys]:
        """Every book with a fresh pool (after a connect), each pool made in steps first."""
        return await self.write([await self._fresh(book) for book in self.ring.take_all()])

    async def tick(self, now_ms: int) -> list[PublishKeys]:
        """`Keyring.tick`, its fresh pools made in steps; the frames that may go."""
        jobs = [await self._fresh(book) for book in self.ring.take_unpublished()]
        jobs += self.ring.rotate(now_ms)
        return await self.write(jobs) if jobs else []

    async def _fresh(self, book: K.SenderKeys) -> Publish:
        await self._fill(self.ring.pool)
        return self.ring.publish_fresh(book)

    async def _fill(self, wanted: int, until_jobs: bool = False) -> None:
        """Make spare one-time prekeys, SPARE_SLICE at a time, until `wanted` are ready (or, with
        `until_jobs`, jobs wait)."""
        spare = self.ring.spare
        while len(spare) < wanted and not (until_jobs and self._jobs) and spare.refill(limit=SPARE_SLICE):
            await trio.lowlevel.checkpoint()
