"""Sender key books: created once with signed, PQ and one-time prekeys, rotated on their period
with a grace period, refilled when the network runs low, kept in 0600 files in the key directory."""
import os
import stat

import pytest

from gateway.crypto.identity import IdentityKey, PrekeyBundle
from gateway.e2e import keys as K
from gateway.e2e.keyring import Keyring
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


def test_keyring_publishes_new_senders_rotates_and_refills(tmp_path):
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    assert ring.ensure(["+15550000001"], 0) == ["+15550000001"]
    first = ring.tick(1)
    assert [f.sender for f in first] == ["+15550000001"] and first[0].replace and len(first[0].one_time_prekeys) == 4
    assert ring.tick(2) == []
    rotated = ring.tick(HOUR)
    assert len(rotated) == 1 and PrekeyBundle.decode(rotated[0].bundle).signed_prekey_id == 2
    assert K.load(str(tmp_path), "+15550000001").signed_prekey_ids == [1, 2]  # saved before published
    assert ring.on_prekey_count(PrekeyCount("+15550000001", 1))[0].one_time_prekeys
    assert ring.on_prekey_count(PrekeyCount("+19999999999", 0)) == []


def test_a_reconnect_publishes_a_fresh_pool_never_keys_published_before(tmp_path):
    """Found in review: every reconnect republished every one-time prekey still held, including
    those the network had already handed to customers, so one key could serve two sessions."""
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    seen: set[int] = set()
    for _ in range(3):  # a connect, then two reconnects
        (frame,) = ring.publish_all()
        ids = {kid for kid, _ in frame.one_time_prekeys}
        assert frame.replace and len(ids) == 4 and not ids & seen
        seen |= ids
    book = K.load(str(tmp_path), "+15550000001")  # saved before published; old privates kept
    assert all(book.peek_one_time(kid) is not None for kid in seen)


def test_a_key_file_that_cannot_be_written_leaves_its_keys_unpublished_and_the_gateway_going(tmp_path):
    """Found by filling the disk: a key file write that failed (ENOSPC) raised out of the link's
    connect and of the network's prekey count, and ended the gateway."""
    ring = Keyring(str(tmp_path), pool=4, low=2, rotation_ms=HOUR, grace_ms=HOUR)
    ring.ensure(["+15550000001"], 0)
    folder = K.senders_dir(str(tmp_path))
    held = folder + ".held"
    os.rename(folder, held)
    open(folder, "w").close()  # the key directory cannot take a file now (root or not)
    assert ring.publish_all() == []  # never publics whose privates are not on disk
    assert ring.on_prekey_count(PrekeyCount("+15550000001", 0)) == []
    assert ring.tick(HOUR) == []  # rotated in memory, not published
    os.unlink(folder)
    os.rename(held, folder)
    (frame,) = ring.tick(HOUR + 1)  # the disk takes it again: published, saved first
    assert frame.replace and PrekeyBundle.decode(frame.bundle).signed_prekey_id == 2
    assert K.load(str(tmp_path), "+15550000001").signed_prekey_ids == [1, 2]
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
