"""Each sender number's identity and prekeys: the pure key book (create, rotate the signed and
PQ prekeys on a period and keep old ones for a grace period, top up the one-time pool, build the
publish frame) and its file in the key directory (`<key_dir>/senders/<digits>.keys`, mode 0600,
written atomically).

Time comes in as an argument. Private keys go to the key file and nowhere else: never to LMDB,
logs, frames or error messages.
"""
from __future__ import annotations

import os
import re
from typing import Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.crypto.identity import (
    IdentityKeyPair,
    MAX_PREKEY_ID,
    OneTimePrekey,
    PqPrekey,
    PrekeyBundle,
    SignedPrekey,
    encode_ec,
    encode_kem,
)
from gateway.decoding import DECODE_ERRORS
from gateway.network.frames import PublishKeys

FILE_VERSION = 1
MAX_STORED_ONE_TIME = 4000  # privates kept for one-time prekeys handed out but not used yet
_FILE_NAME = re.compile(r"^(\d{7,15})\.keys$")


class KeyFileError(Exception):
    """A key file that cannot be read or does not hold what it should (never shows key bytes)."""


class _Signed(msgspec.Struct, array_like=True):
    id: int
    private: bytes  # X25519 private key, or the 64-byte ML-KEM seed for PQ prekeys
    signature: bytes
    created_ms: int
    retired_ms: int = 0  # 0 while current


class _KeyFile(msgspec.Struct, array_like=True):
    version: int
    number: str
    identity_seed: bytes
    signed: list[_Signed]  # the current one last
    pq: list[_Signed]  # the current one last
    one_time: list[tuple[int, bytes]]  # (id, X25519 private), oldest first
    next_one_time_id: int
    network_left: int = -1  # one-time prekeys the network last said it holds (-1: unknown)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_KeyFile).decode


def _next_id(current: int) -> int:
    return 1 if current >= MAX_PREKEY_ID else current + 1


class SenderKeys:
    """The key book of one sender. Mutating methods return whether the book changed (save it then)."""

    def __init__(self, record: _KeyFile) -> None:
        self._r = record
        self.identity = IdentityKeyPair(record.identity_seed)
        self._signed_objs: dict[int, SignedPrekey] = {}
        self._pq_objs: dict[int, PqPrekey] = {}

    @classmethod
    def create(cls, number: str, now_ms: int, pool: int,
               make: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate) -> SenderKeys:
        identity = IdentityKeyPair.generate()
        record = _KeyFile(FILE_VERSION, number, identity.seed, [], [], [], 1)
        keys = cls(record)
        keys._new_signed(now_ms, 1)
        keys._new_pq(now_ms, 1)
        keys.add_one_time(pool, make)
        return keys

    @property
    def number(self) -> str:
        return self._r.number

    @property
    def network_left(self) -> int:
        return self._r.network_left

    # -- signed and PQ prekeys --

    def _new_signed(self, now_ms: int, key_id: int) -> None:
        private = X25519PrivateKey.generate()
        sig = self.identity.sign(encode_ec(private.public_key().public_bytes_raw()))
        self._r.signed.append(_Signed(key_id, private.private_bytes_raw(), sig, now_ms))

    def _new_pq(self, now_ms: int, key_id: int) -> None:
        private = MLKEM1024PrivateKey.generate()
        sig = self.identity.sign(encode_kem(private.public_key().public_bytes_raw()))
        self._r.pq.append(_Signed(key_id, private.private_bytes_raw(), sig, now_ms))

    def rotate_if_due(self, now_ms: int, period_ms: int, grace_ms: int) -> bool:
        """A new signed prekey and PQ prekey once the current ones are `period_ms` old; retired
        ones stay usable (for initial messages still in flight) until `grace_ms` after retirement."""
        changed = False
        r = self._r
        current = r.signed[-1]
        if now_ms - current.created_ms >= period_ms:
            current.retired_ms = now_ms
            self._new_signed(now_ms, _next_id(current.id))
            pq = r.pq[-1]
            pq.retired_ms = now_ms
            self._new_pq(now_ms, _next_id(pq.id))
            changed = True
        for table, cache in ((r.signed, self._signed_objs), (r.pq, self._pq_objs)):
            keep = [k for k in table if not k.retired_ms or now_ms - k.retired_ms < grace_ms]
            if len(keep) != len(table):
                for k in table:
                    if k not in keep:
                        cache.pop(k.id, None)
                table[:] = keep
                changed = True
        return changed

    @property
    def signed_prekey_ids(self) -> list[int]:
        return [k.id for k in self._r.signed]

    @property
    def pq_prekey_ids(self) -> list[int]:
        return [k.id for k in self._r.pq]

    def signed_prekey(self, key_id: int) -> SignedPrekey | None:
        obj = self._signed_objs.get(key_id)
        if obj is None:
            rec = next((k for k in self._r.signed if k.id == key_id), None)
            if rec is None:
                return None
            obj = SignedPrekey(rec.id, X25519PrivateKey.from_private_bytes(rec.private), rec.signature)
            self._signed_objs[key_id] = obj
        return obj

    def pq_prekey(self, key_id: int) -> PqPrekey | None:
        obj = self._pq_objs.get(key_id)
        if obj is None:
            rec = next((k for k in self._r.pq if k.id == key_id), None)
            if rec is None:
                return None
            obj = PqPrekey(rec.id, MLKEM1024PrivateKey.from_seed_bytes(rec.private), rec.signature)
            self._pq_objs[key_id] = obj
        return obj

    # -- one-time prekeys --

    def add_one_time(self, count: int, make: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate
                     ) -> list[tuple[int, bytes]]:
        """`count` fresh one-time prekeys, each from `make` (a key made ahead of need: see
        Keyring.spare); returns their (id, EncodeEC(public)) for publishing."""
        r = self._r
        out = []
        for _ in range(count):
            private = make()
            key_id = r.next_one_time_id
            r.next_one_time_id = _next_id(key_id)
            r.one_time.append((key_id, private.private_bytes_raw()))
            out.append((key_id, encode_ec(private.public_key().public_bytes_raw())))
        excess = len(r.one_time) - MAX_STORED_ONE_TIME
        if excess > 0:
            del r.one_time[:excess]
        return out

    def take_one_time(self, key_id: int) -> OneTimePrekey | None:
        """Hand out a one-time prekey's private half once, forgetting it (None if unknown or used)."""
        for i, (kid, private) in enumerate(self._r.one_time):
            if kid == key_id:
                del self._r.one_time[i]
                return OneTimePrekey(kid, X25519PrivateKey.from_private_bytes(private))
        return None

    def peek_one_time(self, key_id: int) -> OneTimePrekey | None:
        """A one-time prekey's private half without using it up (the inbound path deletes it with
        `drop_one_time` once the message it served has decrypted)."""
        for kid, private in self._r.one_time:
            if kid == key_id:
                return OneTimePrekey(kid, X25519PrivateKey.from_private_bytes(private))
        return None

    def drop_one_time(self, key_ids) -> bool:
        """Delete used one-time prekeys; returns whether any was held (save the book then)."""
        used = set(key_ids)
        before = len(self._r.one_time)
        self._r.one_time[:] = [(kid, p) for kid, p in self._r.one_time if kid not in used]
        return len(self._r.one_time) != before

    def signed_prekey_private(self, key_id: int) -> X25519PrivateKey | None:
        """The private half of a signed prekey (the responder's first ratchet key pair)."""
        rec = next((k for k in self._r.signed if k.id == key_id), None)
        return None if rec is None else X25519PrivateKey.from_private_bytes(rec.private)

    def all_one_time_public(self) -> list[tuple[int, bytes]]:
        return [(kid, encode_ec(X25519PrivateKey.from_private_bytes(p).public_key().public_bytes_raw()))
                for kid, p in self._r.one_time]

    def note_network_left(self, left: int) -> bool:
        if left == self._r.network_left:
            return False
        self._r.network_left = left
        return True

    def refill(self, target: int, low: int, make: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate
               ) -> list[tuple[int, bytes]]:
        """New one-time prekeys (from `make`) when the network's pool fell below `low`: enough to
        bring it back to `target`. Empty when nothing is needed (or the network's count is not
        known yet)."""
        left = self._r.network_left
        if left < 0 or left >= low:
            return []
        self._r.network_left = target
        return self.add_one_time(target - left, make)

    # -- publishing --

    def bundle(self) -> PrekeyBundle:
        """The public bundle without a one-time prekey (the network adds one per request)."""
        spk = self._r.signed[-1]
        pq = self._r.pq[-1]
        spk_pub = X25519PrivateKey.from_private_bytes(spk.private).public_key().public_bytes_raw()
        pq_obj = self.pq_prekey(pq.id)
        return PrekeyBundle(
            identity_key=self.identity.public.ed25519,
            signed_prekey_id=spk.id,
            signed_prekey=encode_ec(spk_pub),
            signed_prekey_signature=spk.signature,
            pq_prekey_id=pq.id,
            pq_prekey=pq_obj.encoded,
            pq_prekey_signature=pq.signature,
        )

    def publish_frame(self, one_time: list[tuple[int, bytes]] | None = None, *, replace: bool = False) -> PublishKeys:
        """`replace=True` tells the network to drop its pool for this sender and take `one_time`
        (every key held when none are given; the keyring always gives a fresh pool); otherwise
        the given new keys are added to the network's pool."""
        if replace and one_time is None:
            one_time = self.all_one_time_public()
        return PublishKeys(self.number, self.bundle().encode(), one_time or [], replace)

    def to_bytes(self) -> bytes:
        return _encode(self._r)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SenderKeys:
        try:
            record = _decode(raw)
        except DECODE_ERRORS as exc:
            raise KeyFileError(f"corrupt key file: {exc}") from None
        if record.version != FILE_VERSION or not record.signed or not record.pq:
            raise KeyFileError("key file of an unknown version or without prekeys")
        return cls(record)


# --- the files ---------------------------------------------------------------------------------

def senders_dir(key_dir: str) -> str:
    return os.path.join(key_dir, "senders")


def _path(key_dir: str, number: str) -> str:
    return os.path.join(senders_dir(key_dir), number.lstrip("+") + ".keys")


def save(key_dir: str, keys: SenderKeys) -> None:
    """Write the book's file atomically (see `write_file`)."""
    write_file(key_dir, keys.number, keys.to_bytes())


def write_file(key_dir: str, number: str, raw: bytes) -> None:
    """Write a book's encoded bytes atomically (temporary file, fsync, rename, fsync the directory),
    mode 0600. Blocks for the fsyncs (~1-3 ms): the running gateway calls it in a worker thread
    (keyring.KeyService); one writer per file at a time (they share the temporary file's name)."""
    folder = senders_dir(key_dir)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    target = _path(key_dir, number)
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:  # a full disk, say: the old file stays whole, and no half-written one lingers
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(key_dir: str, number: str) -> SenderKeys | None:
    path = _path(key_dir, number)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if st.st_mode & 0o077:
        raise KeyFileError(f"{path} is readable by others; chmod 600 it")
    with open(path, "rb") as f:
        keys = SenderKeys.from_bytes(f.read())
    if keys.number != number:
        raise KeyFileError(f"{path} holds the keys of another number")
    return keys


def load_or_create(key_dir: str, number: str, now_ms: int, pool: int,
                   make: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate) -> tuple[SenderKeys, bool]:
    """The sender's key book, created (its one-time prekeys from `make`) and saved on first use;
    (keys, created)."""
    keys = load(key_dir, number)
    if keys is not None:
        return keys, False
    keys = SenderKeys.create(number, now_ms, pool, make)
    save(key_dir, keys)
    return keys, True


def stored_numbers(key_dir: str) -> list[str]:
    try:
        names = os.listdir(senders_dir(key_dir))
    except FileNotFoundError:
        return []
    return sorted("+" + m.group(1) for m in map(_FILE_NAME.match, names) if m)
