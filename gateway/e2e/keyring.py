"""The sender key books of a running gateway: loaded from (or created in) the key directory at
start and on reload, rotated on their period, republished to the network after every connect,
and their one-time prekey pools refilled when the network reports them low.

It returns the frames to send and never sends them itself; the key files are its only I/O.
"""
from __future__ import annotations

import logging

from gateway.crypto.identity import IdentityKeyPair
from gateway.e2e import keys as K
from gateway.network.frames import PrekeyCount, PublishKeys

log = logging.getLogger("gateway.e2e")


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

    def ensure(self, numbers, now_ms: int) -> list[str]:
        """Load or create the key book of every number; returns the numbers created now.
        Raises KeyFileError for an unreadable file (the gateway must not invent a new identity
        over an existing one)."""
        created = []
        for number in numbers:
            if number in self._books:
                continue
            book, made = K.load_or_create(self.key_dir, number, now_ms, self.pool)
            self._books[number] = book
            self._unpublished.add(number)
            if made:
                created.append(number)
                log.info("identity key created for sender %s", number)
        return created

    def identity(self, number: str) -> IdentityKeyPair | None:
        book = self._books.get(number)
        return None if book is None else book.identity

    def book(self, number: str) -> K.SenderKeys | None:
        return self._books.get(number)

    @property
    def numbers(self) -> list[str]:
        return list(self._books)

    def publish_all(self) -> list[PublishKeys]:
        """Every sender's bundle with a fresh one-time pool (after a connect: the network may have
        restarted and forgotten them). See `publish_fresh`."""
        return list(self.publish_all_iter())

    def publish_all_iter(self):
        """`publish_all` one sender at a time (a pool is ~45 µs per key to generate: callers on
        the event loop yield between senders). A sender whose key file cannot be written is left
        out, and published by a later `tick` (see `_saved`)."""
        self._unpublished.clear()
        for book in list(self._books.values()):
            frame = self.publish_fresh(book)
            if frame is not None:
                yield frame

    def publish_fresh(self, book: K.SenderKeys) -> PublishKeys | None:
        """The bundle and a fresh pool of one-time prekeys that replaces the network's pool. Never
        the keys published before: the network may already have handed them to customers, and a
        one-time prekey must serve one session only. Their private halves stay in the key book
        (a customer may still use one) until they age out of its bounded store. None when the key
        file could not be written: the sender is published again by the next `tick`."""
        fresh = book.add_one_time(self.pool)
        book.note_network_left(self.pool)
        if not self._saved(book):  # the privates exist on disk before the publics leave
            self._unpublished.add(book.number)
            return None
        return book.publish_frame(fresh, replace=True)

    def tick(self, now_ms: int) -> list[PublishKeys]:
        """Rotate what is due; the frames that publish the new bundles (and those of senders
        added since the last connect, or whose key file could not be written then)."""
        waiting, self._unpublished = sorted(self._unpublished), set()
        frames = [f for f in (self.publish_fresh(self._books[n]) for n in waiting) if f is not None]
        for book in self._books.values():
            current = book.signed_prekey_ids[-1]
            if book.rotate_if_due(now_ms, self.rotation_ms, self.grace_ms):
                if not self._saved(book):
                    self._unpublished.add(book.number)  # rotated in memory: published once it is on disk
                    continue
                if book.signed_prekey_ids[-1] != current:
                    log.info("signed prekey of %s rotated", book.number)
                    frames.append(book.publish_frame())
        return frames

    def on_prekey_count(self, frame: PrekeyCount) -> list[PublishKeys]:
        book = self._books.get(frame.sender)
        if book is None or frame.left < 0:
            return []
        book.note_network_left(frame.left)
        fresh = book.refill(self.pool, self.low)
        if not fresh or not self._saved(book):  # the privates exist on disk before the publics leave
            return []  # not saved: the network's next count asks again
        return [book.publish_frame(fresh)]

    def _saved(self, book: K.SenderKeys) -> bool:
        """Write the book's key file; False (logged) when the disk refuses it (full, read-only):
        its new keys then stay unpublished, and the gateway goes on."""
        try:
            K.save(self.key_dir, book)
        except OSError as exc:
            if book.number not in self._unsaved:  # once until it is written again: ticks retry every second
                self._unsaved.add(book.number)
                log.warning("key file of sender %s not written (%s): its new keys wait to be published",
                            book.number, exc.strerror or exc)
            return False
        if book.number in self._unsaved:
            self._unsaved.discard(book.number)
            log.info("key file of sender %s written again", book.number)
        return True
