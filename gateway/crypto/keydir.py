"""The key directory: data keys for sealing at rest, one file per key (`data-<id>.key`, 32
random bytes, mode 0600, directory 0700), kept outside the LMDB environment so that a copy of the
database alone reveals no message text. The highest id is the active key.

It creates and reads key files and nothing else; key bytes never go to logs or output.
"""
from __future__ import annotations

import os
import re
import secrets
import stat

from gateway.crypto.seal import KEY_BYTES, Sealer

_NAME = re.compile(r"^data-(\d{1,10})\.key$")


class KeyDirError(Exception):
    pass


def key_dir_for(data_dir: str, configured: str) -> str:
    return configured or os.path.join(data_dir, "keys")


def _key_files(path: str) -> dict[int, str]:
    found = {}
    for name in os.listdir(path):
        m = _NAME.match(name)
        if m:
            found[int(m.group(1))] = os.path.join(path, name)
    return found


def _write_key(path: str, key_id: int) -> None:
    """Written whole or not at all: into a temporary file first, linked under its name once synced
    (a full disk used to leave an empty data-N.key that refused every later start)."""
    target = os.path.join(path, f"data-{key_id}.key")
    scratch = os.path.join(path, f".data-{key_id}.key.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        os.link(scratch, target)  # never over an existing key (FileExistsError)
    finally:
        try:
            os.unlink(scratch)
        except FileNotFoundError:
            pass
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def init_keys(path: str) -> bool:
    """Create the directory and a first data key if there is none; True when a key was made."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    if _key_files(path):
        return False
    _write_key(path, 1)
    return True


def rotate(path: str) -> int:
    """Add a new data key and make it the active one; returns its id. Old keys stay, so every
    record sealed before keeps opening."""
    init_keys(path)
    new_id = max(_key_files(path)) + 1
    _write_key(path, new_id)
    return new_id


def load_sealer(path: str) -> Sealer:
    if not os.path.isdir(path):
        raise KeyDirError(f"key directory {path} does not exist (run `gateway keys init`)")
    files = _key_files(path)
    if not files:
        raise KeyDirError(f"no data keys in {path} (run `gateway keys init`)")
    keys = {}
    for key_id, file in files.items():
        mode = stat.S_IMODE(os.stat(file).st_mode)
        if mode & 0o077:
            raise KeyDirError(f"{file} is readable by others (mode {mode:o}); chmod 600 it")
        with open(file, "rb") as f:
            key = f.read()
        if len(key) != KEY_BYTES:
            raise KeyDirError(f"{file} does not hold a {KEY_BYTES}-byte key")
        keys[key_id] = key
    return Sealer(keys, max(keys))
