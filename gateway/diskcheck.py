"""What making data durable costs on the data directory's disk (`gateway doctor --disk`).

Every 202 waits for a group commit, and an LMDB commit makes two things durable in turn: the
pages the transaction copied, which lie wherever LMDB's free list put them (an accept commit
writes about ACCEPT_COMMIT_PAGES scattered pages), then the meta page. On virtual disks each
scattered page is a request of its own, so the cost per page decides the commit time more than
the disk's bandwidth does. This measures both in a scratch file beside the data (never LMDB's
files) and says what they mean for a commit.

The core (`summarize`) turns timings into figures; `measure` is the I/O: a file of SCRATCH_BYTES
written and synced once (so that later writes overwrite blocks and change no metadata, as LMDB's
preallocated file does), then ROUNDS rounds of one page + fdatasync and of SCATTERED pages at
random places + fdatasync. It takes well under a second on an SSD and is removed afterwards.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from time import perf_counter
from typing import Callable, NamedTuple

PAGE = 4096
SCRATCH_BYTES = 8 << 20
SCATTERED = 8  # pages per scattered round
ROUNDS = 60
ACCEPT_COMMIT_PAGES = 10  # pages of a typical accept commit (the trees' leaves and branches, the free list)


class DiskFigures(NamedTuple):
    one_page_us: float  # median: one page overwritten, then fdatasync
    one_page_p90_us: float
    scattered_us: float  # median: SCATTERED pages at random places, then fdatasync
    per_page_us: float  # what each page past the first adds
    commit_us: float  # estimated: ACCEPT_COMMIT_PAGES scattered pages synced, then the meta page synced


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def summarize(one_page_s: list[float], scattered_s: list[float], scattered: int = SCATTERED) -> DiskFigures:
    """Figures in microseconds from the rounds' durations in seconds."""
    if not one_page_s or not scattered_s or scattered < 2:
        raise ValueError("need rounds of one page and of at least two scattered pages")
    one = _median(one_page_s) * 1e6
    many = _median(scattered_s) * 1e6
    per_page = max(0.0, (many - one) / (scattered - 1))
    p90 = sorted(one_page_s)[min(len(one_page_s) - 1, (len(one_page_s) * 9) // 10)] * 1e6
    commit = one + (ACCEPT_COMMIT_PAGES - 1) * per_page + one
    return DiskFigures(one, p90, many, per_page, commit)


VOLATILE = frozenset({"tmpfs", "ramfs"})  # file systems in memory: an fsync there survives no reboot
_ESCAPE = re.compile(r"\\([0-7]{3})")  # /proc/mounts writes a space as \040, a backslash as \134


def filesystem(path: str, mounts: str) -> tuple[str, str]:
    """(mount point, type) of the mount that holds absolute `path`, from the text of /proc/self/mounts:
    the longest mount point above it, the later line where one is mounted over another."""
    found, depth = ("/", "unknown"), -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        if point == "/" or path == point or path.startswith(point.rstrip("/") + "/"):
            if len(point) >= depth:
                found, depth = (point, fields[2]), len(point)
    return found


def filesystem_of(path: str) -> tuple[str, str] | None:
    """`filesystem` for this machine, None where /proc/self/mounts cannot be read."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            return filesystem(os.path.realpath(path), f.read())
    except OSError:
        return None


def volatile(path: str) -> str | None:
    """What to tell an operator whose data directory is in memory (an fsync there keeps nothing past
    a reboot), else None."""
    fs = filesystem_of(path)
    if fs is None or fs[1] not in VOLATILE:
        return None
    return f"{fs[1]} ({fs[0]}) keeps files in memory: accepted messages do not survive a reboot or power cut"


def scratch_dir(data_dir: str) -> str:
    """The data directory, or the closest existing directory above it (same disk as a rule)."""
    path = os.path.abspath(data_dir)
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def measure(directory: str, rounds: int = ROUNDS, rng: random.Random | None = None,
            clock: Callable[[], float] = perf_counter) -> DiskFigures:
    """Time the rounds in a scratch file in `directory` (removed afterwards). Raises OSError when
    the directory cannot take the file."""
    rng = rng or random.Random()
    pages = SCRATCH_BYTES // PAGE
    block = os.urandom(PAGE)
    fd, path = tempfile.mkstemp(prefix=".gateway-disk-check-", dir=directory)
    try:
        chunk = b"\0" * (1 << 20)
        for offset in range(0, SCRATCH_BYTES, len(chunk)):
            os.pwrite(fd, chunk, offset)
        os.fsync(fd)
        one, many = [], []
        for _ in range(rounds):
            os.pwrite(fd, block, rng.randrange(pages) * PAGE)
            start = clock()
            os.fdatasync(fd)
            one.append(clock() - start)
            start = clock()
            for page in rng.sample(range(pages), SCATTERED):
                os.pwrite(fd, block, page * PAGE)
            os.fdatasync(fd)
            many.append(clock() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return summarize(one, many)


def describe(fig: DiskFigures) -> list[str]:
    """The doctor's lines."""
    return [
        f"one 4 KiB page made durable: {fig.one_page_us:,.0f} µs (p90 {fig.one_page_p90_us:,.0f} µs)",
        f"{SCATTERED} scattered pages: {fig.scattered_us:,.0f} µs, {fig.per_page_us:,.0f} µs for each page past the first",
        f"an accept commit (~{ACCEPT_COMMIT_PAGES} scattered pages, then the meta page): ~{fig.commit_us / 1000:,.2f} ms; "
        "every 202 waits for one",
    ]
