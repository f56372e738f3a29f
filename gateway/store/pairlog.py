"""The pair limits' journal: the bucket state of each (sender, recipient) pair a dispatch round took
from, appended in commit order instead of rewritten in place.

Why: a pair's row sat at a random place in the limiter table, so every dispatch commit rewrote
one page of it per message (~35 of the ~90 pages a commit wrote at 5,000 single sends/s to 6,000
recipients; each dirtied page costs this VM ~10 us of kernel time and lengthens the fsync). Records
numbered in commit order all land on the journal table's last page.

How it stays small: two tables take turns. Records go to the current one; once it holds
`compact_entries` records the other becomes current, the state of every pair the old one holds
that the scheduler still tracks is copied into the new one (its state at copy time: the same or
more taken than anything durable, so never more permissive), and the old table is dropped in
the copy's last commit. A pair refilled to its burst is no longer tracked and is not copied: after
a restart an unknown pair counts as full, which it is. With more live pairs than `compact_entries`,
a compaction waits until the table holds twice what the last one left in it.

Restart: both tables replayed in record order (numbers grow across both, so a merge by key
is commit order); the latest state of each pair wins. A compaction cut short by a crash finishes
after the restart: the table that does not hold the newest record is the old one.

The pure core: it numbers records and remembers which pairs each table holds; the store operations
(store/ops.py: `dispatch`, `copy_pairs`) put what it returns, and the delivery shell drives
compaction (Delivery.compact_pair_log)."""
from __future__ import annotations

import heapq
import struct
from typing import Callable, Iterable

TABLES = ("pairlog_a", "pairlog_b")
COMPACT_ENTRIES = 20_000
COPY_CHUNK = 2048  # pairs copied per store operation (~2-3 ms of the event loop each)

_KEY = struct.Struct(">Q")  # record number, big-endian: key order is record order
_STATE = struct.Struct("<dd")  # tokens, last; then sender \0 recipient (UTF-8)

Pair = tuple[str, str]
PairState = tuple[str, str, tuple[float, float]]  # sender, recipient, (tokens, last)


def encode(seq: int, sender: str, recipient: str, tokens: float, last: float) -> tuple[bytes, bytes]:
    return _KEY.pack(seq), _STATE.pack(tokens, last) + f"{sender}\0{recipient}".encode()


def decode(key: bytes, value: bytes) -> tuple[int, str, str, float, float]:
    tokens, last = _STATE.unpack_from(value)
    sender, _, recipient = value[_STATE.size:].decode().partition("\0")
    return _KEY.unpack(key)[0], sender, recipient, tokens, last


class PairLog:
    __slots__ = ("cur", "seq", "touched", "entries", "compact_entries", "floor")

    def __init__(self, compact_entries: int = COMPACT_ENTRIES) -> None:
        self.cur = 0  # index into TABLES of the table new records go to
        self.seq = 0  # number of the last record handed out
        self.touched: list[set[Pair]] = [set(), set()]  # pairs each table holds a record of (or may)
        self.entries = [0, 0]  # records put into each table since it was last emptied
        self.compact_entries = compact_entries
        self.floor = 0  # records the current table held when the last compaction finished

    @property
    def table(self) -> str:
        return TABLES[self.cur]

    def records(self, states: Iterable[PairState]) -> list[tuple[bytes, bytes]]:
        """(key, value) records of these pair states for `table`, numbered after every record so
        far. Call it where they are put, in the store operation: records are numbered in the order
        they are written. A batch that fails to commit leaves a gap in the numbers and its pairs
        counted as held, which only costs a copy."""
        out = []
        seq = self.seq
        held = self.touched[self.cur]
        for sender, recipient, (tokens, last) in states:
            seq += 1
            out.append(encode(seq, sender, recipient, tokens, last))
            held.add((sender, recipient))
        self.seq = seq
        self.entries[self.cur] += len(out)
        return out

    def replay(self, tables: tuple[Iterable[tuple[bytes, bytes]], Iterable[tuple[bytes, bytes]]]
               ) -> dict[Pair, tuple[float, float]]:
        """Every pair's latest stored state, from both tables' records (each in key order, as a
        scan gives them); sets the core up to go on after them."""
        latest: dict[Pair, tuple[float, float]] = {}
        tagged = [_tagged(rows, i) for i, rows in enumerate(tables)]
        newest = (-1, 0)
        for key, value, i in heapq.merge(*tagged):
            seq, sender, recipient, tokens, last = decode(key, value)
            latest[(sender, recipient)] = (tokens, last)
            self.touched[i].add((sender, recipient))
            self.entries[i] += 1
            newest = (seq, i)
        if newest[0] >= 0:
            self.seq, self.cur = newest
        return latest

    def due(self) -> bool:
        """Whether to compact: the other table still holds records (a compaction a crash cut short),
        or the current one holds `compact_entries` and at least twice what the last compaction left
        in it (with more live pairs than that, each record appended costs at most one copy)."""
        return (self.entries[1 - self.cur] > 0
                or self.entries[self.cur] >= max(self.compact_entries, 2 * self.floor))

    def start_compaction(self) -> tuple[int, list[Pair]]:
        """Switch tables unless the other one still holds records; returns the old table's index
        and the pairs whose state to copy into the current one before the old one is dropped."""
        if self.entries[1 - self.cur] == 0:
            self.cur = 1 - self.cur
        old = 1 - self.cur
        return old, list(self.touched[old])

    def copies(self, pairs: list[Pair], state: Callable[[str, str], tuple[float, float] | None]
               ) -> list[tuple[bytes, bytes]]:
        """Records of the current state of those of `pairs` the scheduler still tracks."""
        return self.records((s, r, st) for s, r in pairs if (st := state(s, r)) is not None)

    def dropped(self, old: int) -> None:
        """The old table's drop committed."""
        self.touched[old] = set()
        self.entries[old] = 0
        self.floor = self.entries[self.cur]


def _tagged(rows: Iterable[tuple[bytes, bytes]], table: int):
    for key, value in rows:
        yield key, value, table
