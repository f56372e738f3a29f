"""Sender key books: created once with signed, PQ and one-time prekeys, rotated on their period
with a grace period, refilled when the network runs low, kept in 0600 files in the key directory."""
import os
import stat
import threading

import pytest
import trio

from gateway.crypto.identity import IdentityKey, PrekeyBundle, encode_ec
from gateway.e2e import keys as K
from gateway.e2e.keyring import Keyring, KeyService
from gateway.network.frames import PrekeyCount

HOUR = 3_600_000


def test_new_book_has_an_identity_signed_and_pq_prekeys_and_a_one_time_pool():
    book = K.SenderKeys.create("+15550000001", 1000, 5)
    bundle = book.bundle()
    identity = IdentityKey(bundle.identity_key)
    identity.verify(bundle.signed_prekey_signature, bundle.signed_prekey)
    identity.verify(bundle.pq_prekey_signature, bundle.pq_prekey)
    assert bundle.one_time_prekey is None and len(book.all_one_time_public()) == 5


def test_signed_prekey_rotates_after_its_period_and_the_old_one_lasts_the_grace_period():
    book = K.SenderKeys.create("+15550000001", 0, 1)
    assert not book.rotate_if_due(HOUR - 1, HOUR, 2 * HOUR)
    assert book.rotate_if_due(HOUR, HOUR, 2 * HOUR)
    assert book.signed_prekey_ids == [1, 2] and book.pq_prekey_ids == [1, 2]
    assert book.signed_prekey(1) is not None  # still answers initial messages in flight
    book.rotate_if_due(3 * HOUR - 1, 10 * HOUR, 2 * HOUR)
    assert book.signed_prekey_ids == [1, 2]
    assert book.rotate_if_due(3 * HOUR, 10 * HOUR, 2 * HOUR)
    assert book.signed_prekey_ids == [2] and book.signed_prekey(1) is None and book.pq_prekey(1) is None


def test_one_time_pool_is_refilled_to_the_target_when_the_network_runs_low():
    book = K.SenderKeys.create("+15550000001", 0, 10)
    assert book.refill(10, 3) == []  # the network's count is not known yet
    book.note_network_left(3)
    assert book.refill(10, 3) == []
    book.note_network_left(2)
    fresh = book.refill(10, 3)
    assert len(fresh) == 8 and len({kid for kid, _ in fresh}) == 8
    assert all(pub[0] == 0x05 and len(pub) == 33 for _, pub in fresh)


def test_a_one_time_prekey_is_handed_out_once():
    book = K.SenderKeys.create("+15550000001", 0, 2)
    key_id, public = book.all_one_time_public()[0]
    assert book.take_one_time(key_id).encoded == public
    assert book.take_one_time(key_id) is None


def test_book_survives_its_file_with_mode_0600(tmp_path):
    book, created = K.load_or_create(str(tmp_path), "+15550000001", 0, 3)
    assert created
    again, created = K.load_or_create(str(tmp_path), "+15550000001", 0, 3)
    assert not created and again.bundle() == book.bundle()
    path = tmp_path / "senders" / "15550000001.keys"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert K.stored_numbers(str(tmp_path)) == ["+15550000001"]


def test_a_world_readable_or_corrupt_key_file_is_refused(tmp_path):
    K.load_or_create(str(tmp_path), "+15550000001", 0, 1)
    path = tmp_path / "senders" / "15550000001.keys"
    os.chmod(path, 0o644)
    with pytest.raises(K.KeyFileError):
        K.load(str(tmp_path), "+15550000001")
    os.chmod(path, 0o600)
    path.write_bytes(b"\x93garbage")
    with pytest.raises(K.KeyFileError):
        K.load(str(tmp_path), "+15550000001")


def test_private_keys_never_appear_in_the_publish_frame():
    book = K.SenderKeys.create("+15550000001", 0, 2)
    frame = book.publish_frame(replace=True)
    encoded = frame.bundle + b"".join(p for _, p in frame.one_time_prekeys)
    assert book.identity.seed not in encoded
    assert PrekeyBundle.decode(frame.bundle).identity_key == book.identity.public.ed25519


def _frames(jobs):
    return [job.frame for job in jobs if job.frame is not None]


def test_keyring_publishes_new_senders_rotates_and_refills(tmp_path):
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    assert ring.ensure(["+15550000001"], 0) == ["+15550000001"]
    first = ring.tick(1)
    assert [f.sender for f in _frames(first)] == ["+15550000001"] and first[0].frame.replace
    assert len(first[0].frame.one_time_prekeys) == 4
    assert ring.tick(2) == []
    rotated = ring.tick(HOUR)
    assert len(rotated) == 1 and PrekeyBundle.decode(rotated[0].frame.bundle).signed_prekey_id == 2
    (refill,) = ring.on_prekey_count(PrekeyCount("+15550000001", 1))
    assert len(refill.frame.one_time_prekeys) == 3 and not refill.frame.replace
    assert ring.on_prekey_count(PrekeyCount("+19999999999", 0)) == []


def test_counts_while_a_refill_is_on_its_way_start_no_other():
    """A count the network sends before our refill reached it describes its pool without the
    refill: each such count made a new pool on the event loop (5-9 ms each here), and a network
    counting often could keep the gateway generating keys."""
    ring = Keyring("/nonexistent", pool=10, low=5, rotation_ms=HOUR, grace_ms=HOUR)
    book = K.SenderKeys.create("+15550000001", 0, 10)
    ring._books[book.number] = book
    (job,) = ring.on_prekey_count(PrekeyCount(book.number, 0))
    assert ring.on_prekey_count(PrekeyCount(book.number, 0)) == []
    assert ring.on_prekey_count(PrekeyCount(book.number, 1)) == []
    assert ring.written(job, None)
    assert ring.on_prekey_count(PrekeyCount(book.number, 9)) == []  # the count after it landed
    (again,) = ring.on_prekey_count(PrekeyCount(book.number, 2))
    assert len(again.frame.one_time_prekeys) == 8
    assert not ring.written(again, OSError(28, "No space left on device"))  # not sent
    assert ring.on_prekey_count(PrekeyCount(book.number, 0))  # the next count asks again


def test_refills_take_keys_made_ahead_of_need():
    ring = Keyring("/nonexistent", pool=10, low=5, rotation_ms=HOUR, grace_ms=HOUR)
    book = K.SenderKeys.create("+15550000001", 0, 10)
    ring._books[book.number] = book
    ring.spare.refill()
    assert len(ring.spare) == 20
    made = list(ring.spare._keys)
    (job,) = ring.on_prekey_count(PrekeyCount(book.number, 3))
    assert len(ring.spare) == 13
    published = {encode_ec(k.public_key().public_bytes_raw()) for k in made[-7:]}
    assert {pub for _, pub in job.frame.one_time_prekeys} == published


async def test_the_key_service_writes_files_off_the_event_loop_before_their_frames_go(tmp_path):
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    sent, writers = [], []
    real = K.write_file

    def write_file(key_dir, number, raw):
        writers.append(threading.current_thread())
        real(key_dir, number, raw)

    async def send(frames):
        book = K.load(str(tmp_path), "+15550000001")
        for f in frames:  # every public key sent has its private half on disk already
            assert all(book.peek_one_time(kid) is not None for kid, _ in f.one_time_prekeys)
        sent.extend(frames)

    service = KeyService(ring, send)
    K.write_file, saved = write_file, K.write_file
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            frames = await service.tick(1)
            await send(frames)
            service.submit(ring.on_prekey_count(PrekeyCount("+15550000001", 0)))
            with trio.fail_after(10):
                while len(sent) < 2 or len(ring.spare) < ring.spare.capacity:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        K.write_file = saved
    assert [f.replace for f in sent] == [True, False] and len(sent[1].one_time_prekeys) == 4
    assert writers and threading.main_thread() not in writers
    assert service.files_written == 2


async def test_a_reconnect_publishes_a_fresh_pool_never_keys_published_before(tmp_path):
    """Found in review: every reconnect republished every one-time prekey still held, including
    those the network had already handed to customers, so one key could serve two sessions."""
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    service = KeyService(ring, None)
    seen: set[int] = set()
    for _ in range(3):  # a connect, then two reconnects
        (frame,) = await service.publish_all()
        ids = {kid for kid, _ in frame.one_time_prekeys}
        assert frame.replace and len(ids) == 4 and not ids & seen
        seen |= ids
    book = K.load(str(tmp_path), "+15550000001")  # saved before published; old privates kept
    assert all(book.peek_one_time(kid) is not None for kid in seen)


async def test_a_key_file_that_cannot_be_written_leaves_its_keys_unpublished_and_the_gateway_going(tmp_path):
    """Found by filling the disk: a key file write that failed (ENOSPC) raised out of the link's
    connect and of the network's prekey count, and ended the gateway."""
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    service = KeyService(ring, None)
    folder = K.senders_dir(str(tmp_path))
    held = folder + ".held"
    os.rename(folder, held)
    open(folder, "w").close()  # the key directory cannot take a file now (root or not)
    assert await service.publish_all() == []  # never publics whose privates are not on disk
    assert await service.write(ring.on_prekey_count(PrekeyCount("+15550000001", 0))) == []
    assert await service.tick(HOUR) == []  # rotated in memory, not published
    os.unlink(folder)
    os.rename(held, folder)
    (frame,) = await service.tick(HOUR + 1)  # the disk takes it again: published, saved first
    assert frame.replace and PrekeyBundle.decode(frame.bundle).signed_prekey_id == 2
    assert K.load(str(tmp_path), "+15550000001").signed_prekey_ids == [1, 2]
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


async def test_jobs_waiting_together_write_each_book_once_at_its_latest_state(tmp_path):
    """New inbound sessions use prekeys in every batch: jobs that wait while a write is under way
    go in the next round, one write per book, whatever the number of jobs."""
    ring = Keyring(str(tmp_path), pool=8, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    book = ring.book("+15550000001")
    ids = [kid for kid, _ in book.all_one_time_public()]
    sent = []

    async def send(frames):
        sent.extend(frames)

    service = KeyService(ring, send)
    for kid in ids[:3]:
        service.submit(ring.used_one_time("+15550000001", [kid]))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with trio.fail_after(10):
            while service.files_written < 1:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert service.files_written == 1 and sent == []
    saved = K.load(str(tmp_path), "+15550000001")
    assert all(saved.peek_one_time(kid) is None for kid in ids[:3])
    assert all(saved.peek_one_time(kid) is not None for kid in ids[3:])


async def test_senders_added_while_running_get_books_made_in_a_worker_thread(tmp_path):
    ring = Keyring(str(tmp_path), pool=6, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    service = KeyService(ring, None)
    threads = []
    real = K.load_or_create

    def load_or_create(*args):
        threads.append(threading.current_thread())
        return real(*args)

    K.load_or_create, saved = load_or_create, K.load_or_create
    try:
        assert await service.ensure(["+15550000001", "+15550000002", "+15550000003"], 5) == ["+15550000002",
                                                                                             "+15550000003"]
    finally:
        K.load_or_create = saved
    assert threads and threading.main_thread() not in threads
    assert len(K.load(str(tmp_path), "+15550000003").all_one_time_public()) == 6  # saved whole
    assert [b.number for b in ring.take_unpublished()] == ["+15550000001", "+15550000002", "+15550000003"]
    assert await service.ensure(["+15550000002"], 6) == []  # nothing missing: no thread
    bad = tmp_path / "senders" / "15550000004.keys"
    bad.write_bytes(b"\x93garbage")
    os.chmod(bad, 0o600)
    with pytest.raises(K.KeyFileError):  # never a new identity over an unreadable file
        await service.ensure(["+15550000005", "+15550000004"], 7)
    assert ring.book("+15550000005") is None  # none adopted when one fails
