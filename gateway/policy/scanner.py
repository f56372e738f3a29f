"""The sensitive-word scanner: an immutable Aho-Corasick automaton over the skeletons of categorised
terms, finding hits whose spans index the original text, and masking them. Pure, with no per-message
state; a built Scanner is never changed (beyond a memo of compiled regexes in the pure-Python
twin), so its holder may swap it atomically.

Whole-word terms are stored as " skeleton " (the text skeleton is space-padded and every non-word
character is a space), so word boundaries cost nothing at scan time; substring terms (the default
for scripts written without spaces) are stored bare. Runs collapsed in the skeleton are checked
against the term's own run lengths, so "ass" finds "asssss" but not "as", and "boob" not "Bob": a
candidate found in the skeleton is confirmed by the run lengths at its own position (`run_counts` of
the joined text), and only a confirmed text pays for the mapped skeleton that gives exact spans.
With the pure-Python twin of normalize, where `run_counts` costs 5-12 µs a message, a candidate is
confirmed instead by a regex over the joined text (~1 µs) demanding the same run lengths: it finds
some occurrence of the key with long enough runs exactly when the per-position test finds one, so
both give the same hits.

Keys are spread over automata of at most SHARD_KEYS keys each: pyahocorasick's `make_automaton`
holds the GIL for ~0.4-1.2 µs per key (growing with the automaton), so a 100,000-term list built
in a worker thread in one automaton would stall the event loop for 50 ms or more; in shards of
2,048 keys it never holds it for more than ~2 ms at a time (4,096-key shards took ~5 ms each here,
the whole 5 ms stall budget). Each shard costs a scan ~0.4 µs: a 100,000-term list scans in
~23 µs a message with 2,048-key shards, ~12 µs with 4,096 and ~42 µs with 1,024. Lists of up to
SHARD_KEYS keys (the usual ones) scan with a single automaton. Freeing is as costly as making: a 100,000-term scanner dropped at once
holds the GIL for 30-80 ms, so its holder frees a replaced one with `release`, an automaton at a
time (see policy/release.py).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping

import ahocorasick
import msgspec

from gateway.policy.normalize import (IMPLEMENTATION, capitals_as_latin, collapse, fold_char, is_unspaced,
                                      run_counts, run_lengths, skeleton_map, skeleton_pair)
from gateway.policy.normalize_py import leet_words

SHARD_KEYS = 2048  # keys per automaton (see the module docstring)
KEY_BUCKETS = 64  # dicts the build data is spread over (see `Scanner.build`)
PAUSE_EVERY = 32  # terms normalized (or keys added) between two calls of `pause` while building


class Term(msgspec.Struct, frozen=True):
    """A sensitive term; `whole_word` None means: whole-word unless written in an unspaced script."""

    text: str
    whole_word: bool | None = None


class Hit(msgspec.Struct, frozen=True):
    """One match: `text[start:end]` of the scanned text is an occurrence of `term` (as given)."""

    term: str
    category: str
    start: int
    end: int


class _Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    term: str
    category: str
    need: tuple[int, ...] | None  # minimum run length per skeleton character, None if all are 1


class _Key(msgspec.Struct, frozen=True, array_like=True, gc=False):
    lead: int  # 1 for whole-word keys (" core "), 0 for substring keys
    size: int  # len(core)
    entries: tuple[_Entry, ...]
    runs: tuple[tuple[int, ...], ...] | None  # per entry: (offset, minimum, ...) of its runs longer than
    # one, any of which confirms the key; None if some entry has no run (the key alone is a hit)


def _core(text: str) -> tuple[str, str, tuple[int, ...] | None]:
    """(joined, skeleton, run lengths or None when every run is one long) of a term, unpadded."""
    joined, skeleton = skeleton_pair(text)
    if len(joined) == len(skeleton):
        return joined[1:-1], skeleton[1:-1], None
    return joined[1:-1], skeleton[1:-1], tuple(run_lengths(joined)[1:-1])


def _core_of(joined: str) -> tuple[str, tuple[int, ...] | None]:
    """(skeleton, run lengths) of folded text with its words joined ("win 100" as "win100", which
    a text's skeleton reads as one word: "winioo")."""
    joined = leet_words(joined)
    lengths = run_lengths(joined)
    skeleton = collapse(joined)
    return skeleton, (None if all(n == 1 for n in lengths) else tuple(lengths))


def _runs(lead: int, needs: Iterable[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """Each need as flat (offset, minimum, ...) pairs for its runs longer than one; offsets count from
    the key's first character in the skeleton (the leading space of a whole-word key included)."""
    return tuple(tuple(x for i, n in enumerate(need) if n > 1 for x in (lead + i, n)) for need in sorted(set(needs)))


def _runs_met(counts: bytes, at: int, runs: tuple[tuple[int, ...], ...]) -> bool:
    for pairs in runs:
        for i in range(0, len(pairs), 2):
            if counts[at + pairs[i]] < pairs[i + 1]:
                break
        else:
            return True
    return False


def _runs_pattern(found: str, lead: int, runs: tuple[tuple[int, ...], ...]) -> re.Pattern:
    """A regex over the joined text matching an occurrence of the key `found` (as it stands in the
    skeleton) whose runs meet one of `runs`: " aa*sss*(?= )" for the whole-word key " as " of "ass"
    (each run as its minimum and then any more, so a whole-word key starts with a literal for sre to
    search for)."""
    core = found[lead:len(found) - lead]
    alternatives = []
    for pairs in runs:
        least = dict(zip(pairs[::2], pairs[1::2]))
        alternatives.append("".join(_at_least(re.escape(c), least.get(lead + i, 1)) for i, c in enumerate(core)))
    body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    # a substring key starts where a run starts: tried inside a long run, each start would walk the
    # rest of it (quadratic in a text of one repeated letter)
    return re.compile(f" {body}(?= )" if lead else f"(?<!{re.escape(core[0])}){body}")


def _at_least(atom: str, n: int) -> str:
    # possessive: a run is taken whole (the next atom is another character), never given back
    return atom * n + atom + "*+"


class _Released:
    """The automata of a released Scanner: a scan of it is a bug, never a clean text."""

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        raise RuntimeError("scan of a released Scanner: its rules were replaced and freed")


_RELEASED = _Released()


class Scanner:
    """Built once from {category: [Term, ...]}; `scan` is safe to call from any number of threads."""

    __slots__ = ("_automata", "_terms", "_patterns", "__weakref__")

    def __init__(self, automata: tuple, terms: int) -> None:
        self._automata = automata
        self._terms = terms
        # compiled on first use, by id of the _Key (each lives in the automata as long as this scanner)
        self._patterns: dict[int, re.Pattern] = {}

    @classmethod
    def build(cls, terms: Mapping[str, Iterable[Term]], pause: Callable[[], None] | None = None) -> Scanner:
        """Raises ValueError for a term with no letter or digit (it would match everywhere or nowhere).
        `pause`, when given, is called every PAUSE_EVERY terms and keys and after each automaton is made: a
        builder running in a worker thread passes a call that lets the event loop's thread run (policy/service.py)."""
        # the build data in KEY_BUCKETS dicts: one dict of 100,000 keys resizes in single C calls
        # that hold the GIL for up to ~7 ms
        buckets: list[dict[str, tuple[int, int, dict[_Entry, None]]]] = [{} for _ in range(KEY_BUCKETS)]
        count = 0
        for category, items in terms.items():
            for term in items:
                whole = term.whole_word if term.whole_word is not None else not is_unspaced(term.text)
                joined, core, need = _core(term.text)
                if not core.strip(" $@"):
                    raise ValueError(f"term {term.text!r} in {category!r} has no letter or digit")
                count += 1
                if pause is not None and count % PAUSE_EVERY == 0:
                    pause()
                variants = [(core, need)]
                if whole and " " in core:  # "free money" also as "freemoney", with its own run lengths
                    variants.append(_core_of(joined.replace(" ", "")))
                for v_core, v_need in variants:
                    key = f" {v_core} " if whole else v_core
                    slot = buckets[hash(key) % KEY_BUCKETS].setdefault(key, (int(whole), len(v_core), {}))
                    slot[2][_Entry(term.text, category, v_need)] = None
        automata = []
        automaton = None
        n = 0
        for keys in buckets:
            while keys:
                # popped, so the build data goes key by key: freed all at once at the end, 100,000
                # keys' worth held the GIL for ~35 ms
                key, (lead, size, entries) = keys.popitem()
                n += 1
                if pause is not None and n % PAUSE_EVERY == 0:
                    pause()
                if automaton is None:
                    automaton = ahocorasick.Automaton()
                needs = [e.need for e in entries]
                runs = None if None in needs else _runs(lead, needs)
                automaton.add_word(key, _Key(lead, size, tuple(entries), runs))
                if len(automaton) >= SHARD_KEYS:
                    automata.append(_made(automaton, pause))
                    automaton = None
        if automaton is not None:
            automata.append(_made(automaton, pause))
        return cls(tuple(automata), count)

    def release(self, pause: Callable[[], None]) -> None:
        """Frees the automata one at a time in shard order, calling `pause` after each, so a worker
        thread that passes a GIL-releasing `pause` never holds the event loop for more than one
        automaton's free (~1-3 ms). Only for a scanner no reader can reach any more: scanning it
        afterwards raises RuntimeError. A scan still running in another thread keeps what it walks."""
        automata = list(self._automata)  # a second release raises RuntimeError here
        automata.reverse()
        self._automata = _RELEASED
        while automata:
            automata.pop()
            pause()

    def __len__(self) -> int:
        """The number of terms it was built from."""
        return self._terms

    @property
    def shards(self) -> int:
        """How many automata a scan walks (1 for lists of up to SHARD_KEYS keys, 0 when empty)."""
        return len(self._automata)

    def _scan_by_counts(self, text: str) -> list[Hit]:
        """Every hit in `text`, ordered by span; spans index `text` itself."""
        if not self._automata:
            return []
        joined, skeleton = skeleton_pair(text)
        counts = None
        for automaton in self._automata:
            for last, key in automaton.iter(skeleton):
                runs = key.runs
                if runs is None:
                    return self._exact_hits(text)
                if counts is None:
                    counts = run_counts(joined)
                if _runs_met(counts, last - 2 * key.lead - key.size + 1, runs):
                    return self._exact_hits(text)
        return []

    def _scan_by_patterns(self, text: str) -> list[Hit]:
        """Every hit in `text`, ordered by span; spans index `text` itself. The same hits as
        `_scan_by_counts`, confirming candidates by regex (see the module docstring)."""
        if not self._automata:
            return []
        joined, skeleton = skeleton_pair(text)
        patterns = self._patterns
        for automaton in self._automata:
            for last, key in automaton.iter(skeleton):
                runs = key.runs
                if runs is None:
                    return self._exact_hits(text)
                pattern = patterns.get(id(key))
                if pattern is None:  # compiled on first use: most keys with runs never match
                    found = skeleton[last - 2 * key.lead - key.size + 1:last + 1]
                    pattern = patterns[id(key)] = _runs_pattern(found, key.lead, runs)
                if pattern.search(joined) is not None:
                    return self._exact_hits(text)
        return []

    # the cheaper confirmation for the normalize implementation in use; both give the same hits
    _scan_one = _scan_by_counts if IMPLEMENTATION == "native" else _scan_by_patterns

    def scan(self, text: str) -> list[Hit]:
        """Every hit in `text`, ordered by span; spans index `text` itself. A text holding capitals
        of another script that imitate Latin ones ("IDIOТ" with a Cyrillic Т) is also read with those
        as the Latin letters, and its hits are the hits of either reading."""
        hits = self._scan_one(text)
        latin = capitals_as_latin(text)
        if latin is None:
            return hits
        more = self._scan_one(latin)
        if not more:
            return hits
        return sorted({*hits, *more}, key=lambda h: (h.start, h.end, h.category, h.term))

    def _exact_hits(self, text: str) -> list[Hit]:
        sk = skeleton_map(text)
        hits: set[Hit] = set()
        for automaton in self._automata:
            for last, key in automaton.iter(sk.text):
                a = last - key.lead - key.size + 1
                b = a + key.size
                counts = sk.counts[a:b]
                for e in key.entries:
                    if e.need is None or all(c >= n for c, n in zip(counts, e.need)):
                        hits.add(Hit(e.term, e.category, sk.starts[a], sk.ends[b - 1]))
        return sorted(hits, key=lambda h: (h.start, h.end, h.category, h.term))


def _made(automaton, pause: Callable[[], None] | None):
    automaton.make_automaton()
    if pause is not None:
        pause()
    return automaton


def _visible(c: str) -> bool:
    return unicodedata.category(c)[0] != "M" and fold_char(c) != ""


def mask(text: str, hits: Iterable[Hit], char: str = "*") -> str:
    """`text` with every code point inside a hit's span replaced by `char`, except combining marks and
    invisible format characters there, which go with the letter they belong to; all else is kept."""
    spans = sorted((h.start, h.end) for h in hits)
    out: list[str] = []
    pos = 0
    for start, end in spans:
        start = max(start, pos)
        if end <= start:
            continue
        out.append(text[pos:start])
        out.append("".join(char for c in text[start:end] if _visible(c)))
        pos = end
    out.append(text[pos:])
    return "".join(out)
