"""Keeps LMDB's data file a little ahead of its data, with written zeros.

Why: LMDB writes the pages a commit adds past the end of its file while the data grows, so such a
commit changes the file's size. fdatasync must then commit the file system's journal (the new size)
besides the pages. On this project's ext4 VM that costs ~2.5x the CPU and wall time of an
fdatasync that only overwrites (bench/RESULTS.md, "Session of 2026-12-07 (third)"). Zeros written
ahead of the data make most commits plain overwrites; the journal is paid once per top-up instead
of once per commit. fallocate would not do: its unwritten extents need the journal on their first
write too.

Safety: the zeros go only past the last page of the last commit, and only while the writer thread
holds LMDB's write lock with a transaction that has not allocated a page yet. Nothing is there
then, and nothing can get there meanwhile. LMDB reads its extent from its meta pages, never from
the file's size, so the extra length is only disk space (at most `ahead` bytes). LMDB locks only
its lock file, so the second descriptor this opens on the data file breaks no lock when closed.

`plan` is the pure core; `Preallocator.top_up` is called by the writer thread (store/writer.py).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("gateway.store")

_CHUNK = 256 * 1024  # bytes per pwrite of zeros


def plan(used: int, file_size: int, map_size: int, ahead: int) -> tuple[int, int] | None:
    """(offset, length) of the zeros that bring the file to `used + ahead` bytes (never past the
    map), once less than half of `ahead` is left past `used`; None while enough is left, when
    `ahead` is 0 (off) or at the map's end."""
    if ahead <= 0:
        return None
    start = max(file_size, used)
    if start - used >= ahead // 2:
        return None
    end = min(used + ahead, map_size)
    if end <= start:
        return None
    return start, end - start


class Preallocator:
    """Tops up LMDB's data file `path` to `ahead` bytes past its data (see the module's docstring).
    One thread only: the writer's."""

    def __init__(self, path: str, ahead: int) -> None:
        self.path = path
        self.ahead = ahead
        self.written = 0  # bytes of zeros written since start
        self.top_ups = 0
        self._fd = -1
        self._size = 0
        self._zeros = b""

    def open(self) -> None:
        if self.ahead <= 0:
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            log.warning("LMDB data file %s is not kept ahead of its data: %s", self.path, exc)
            self.close()
            return
        self._zeros = bytes(min(_CHUNK, self.ahead))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def top_up(self, env, psize: int) -> None:
        """Writes the zeros `plan` asks for and syncs them. Call only holding a write transaction
        that has allocated nothing yet. A failure (a full disk, say) is logged and turns this off:
        LMDB then grows its file itself, as without it."""
        if self._fd < 0:
            return
        try:
            info = env.info()
            step = plan((info["last_pgno"] + 1) * psize, self._size, info["map_size"], self.ahead)
            if step is None:
                return
            offset, length = step
            fd, zeros = self._fd, memoryview(self._zeros)
            end = offset + length
            while offset < end:
                offset += os.pwrite(fd, zeros[:end - offset], offset)
            os.fdatasync(fd)
        except Exception as exc:  # OSError mostly; whatever it is, LMDB's own writes go on as before
            log.warning("keeping the LMDB data file ahead of its data stopped: %s", exc)
            self.close()
            return
        self._size = end
        self.written += length
        self.top_ups += 1
