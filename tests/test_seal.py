"""Sealing at rest and the key directory."""
import os
import stat

import pytest

from gateway.crypto.keydir import KeyDirError, init_keys, load_sealer, rotate
from gateway.crypto.seal import HEADER, SealError, Sealer, key_id_of

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_sealed_text_opens_with_the_same_associated_data():
    s = Sealer({1: K1}, 1)
    blob = s.seal(b"your code is 123456", b"msg-1")
    assert b"123456" not in blob
    assert s.open(blob, b"msg-1") == b"your code is 123456"


def test_every_seal_has_its_own_nonce_across_pool_refills():
    s = Sealer({1: K1}, 1)
    blobs = [s.seal(b"x", b"id-%d" % i) for i in range(1_000)]  # three pools of nonces and a bit
    assert len({b[5:HEADER] for b in blobs}) == 1_000
    assert all(s.open(b, b"id-%d" % i) == b"x" for i, b in enumerate(blobs))


def test_a_forked_child_does_not_reuse_the_parents_nonces():
    s = Sealer({1: K1}, 1)
    s.seal(b"x", b"a")  # the pool is drawn; the next nonces sit in this process's memory
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, s.seal(b"x", b"b")[5:HEADER])
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_nonce = os.read(read, 64)
    os.close(read)
    parent_nonces = {s.seal(b"x", b"b")[5:HEADER] for _ in range(340)}
    assert len(child_nonce) == 12 and child_nonce not in parent_nonces


def test_a_blob_moved_to_another_record_does_not_open():
    s = Sealer({1: K1}, 1)
    with pytest.raises(SealError):
        s.open(s.seal(b"x", b"msg-1"), b"msg-2")


def test_any_flipped_bit_is_refused():
    s = Sealer({1: K1}, 1)
    blob = s.seal(b"hello", b"m")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SealError):
            s.open(bytes(tampered), b"m")


def test_records_sealed_before_a_rotation_still_open():
    old = Sealer({1: K1}, 1).seal(b"old", b"m")
    rotated = Sealer({1: K1, 2: K2}, 2)
    new = rotated.seal(b"new", b"m")
    assert (key_id_of(old), key_id_of(new)) == (1, 2)
    assert rotated.open(old, b"m") == b"old" and rotated.open(new, b"m") == b"new"


def test_a_missing_key_is_a_clear_error():
    blob = Sealer({2: K2}, 2).seal(b"x", b"m")
    with pytest.raises(SealError, match="data key 2"):
        Sealer({1: K1}, 1).open(blob, b"m")


def test_key_dir_is_created_private_with_one_key(tmp_path):
    path = str(tmp_path / "keys")
    assert init_keys(path) is True
    assert init_keys(path) is False
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(path, "data-1.key")).st_mode) == 0o600
    assert load_sealer(path).key_ids == [1]


def test_rotate_adds_the_active_key_and_keeps_the_old(tmp_path):
    path = str(tmp_path / "keys")
    init_keys(path)
    blob = load_sealer(path).seal(b"before", b"m")
    assert rotate(path) == 2
    sealer = load_sealer(path)
    assert sealer.active == 2 and sealer.open(blob, b"m") == b"before"


def test_a_key_readable_by_others_is_refused(tmp_path):
    path = str(tmp_path / "keys")
    init_keys(path)
    os.chmod(os.path.join(path, "data-1.key"), 0o644)
    with pytest.raises(KeyDirError, match="chmod 600"):
        load_sealer(path)
