"""Opens the LMDB environment and its named tables, and offers read-only lookups.

Reads use short read transactions from any task; this module never writes (the Writer does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import lmdb

from gateway.store import records


@dataclass(frozen=True)
class Store:
    env: lmdb.Environment
    dbs: dict[str, object]
    path: str

    def get(self, table: str, key: bytes) -> bytes | None:
        with self.env.begin(db=self.dbs[table], buffers=False) as txn:
            return txn.get(key)

    def scan(self, table: str, prefix: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self.env.begin(db=self.dbs[table], buffers=False) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                out.append((key, value))
        return out

    def count(self, table: str) -> int:
        with self.env.begin(db=self.dbs[table]) as txn:
            return txn.stat(self.dbs[table])["entries"]

    def message(self, msg_id: str) -> records.MessageRecord | None:
        raw = self.get("messages", msg_id.encode())
        return records.message_decoder.decode(raw) if raw is not None else None

    def usage(self) -> tuple[int, int]:
        """(bytes in use, map size) for readiness and metrics."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]

    def close(self) -> None:
        self.env.close()


def open_store(data_dir: str, map_size_mb: int) -> Store:
    path = os.path.join(data_dir, "lmdb")
    os.makedirs(path, mode=0o700, exist_ok=True)
    env = lmdb.open(
        path,
        map_size=map_size_mb * 1024 * 1024,
        max_dbs=len(records.TABLES) + 4,
        max_readers=512,
        sync=True,
        metasync=True,
        readahead=False,
        meminit=False,
    )
    dbs = {name: env.open_db(name.encode()) for name in records.TABLES}
    return Store(env=env, dbs=dbs, path=path)
