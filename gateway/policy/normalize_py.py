"""Folds text and terms alike into the form the scanner matches on, keeping for every output character
the span of the original text it came from. Pure: no I/O beyond the packaged confusables table, and it
must never lose or blur that mapping back to the original text.

Two stages, each with a fast string-only form and an exact mapped form that agree by construction:

* `fold` / `normalize` — per code point (after canonical composition of each base + marks cluster):
  NFKC, case folding, removal of default-ignorables (ZWSP/ZWJ/ZWNJ, word joiner, soft hyphen, BOM,
  variation selectors, every other format character), removal of combining diacritics (U+0300-036F
  and the other blocks of combining marks for Latin, Greek, Cyrillic and symbols; "ñ" and "й" stay
  letters of their own), Arabic harakat, Quranic annotation marks and tatweel, the Devanagari nukta;
  Arabic letter variants (أ إ آ ٱ -> ا, ى ی -> ي, ة -> ه, ک -> ك); confusable Latin/Greek/Cyrillic/
  Armenian letters -> the ASCII letter they imitate (capitals that imitate a Latin capital their
  small form does not, such as Cyrillic Т or Greek Ε, are left to a second reading of the text:
  `capitals_as_latin`); every decimal digit -> ASCII; "$" and "@" stay;
  and every other character that is not a letter, mark or digit (spaces, punctuation, symbols, emoji)
  -> one space.
* `skeleton` / `skeleton_map` — on the folded text padded with a space at each end: runs of three or
  more single-letter tokens are joined ("f r e e", "f.r.e.e" -> "free"), spaces between two
  characters of scripts written without spaces (CJK, kana, Thai, Lao, Khmer, Myanmar) are dropped,
  and one is put where such a character meets any other, before the joining and after it
  ("这是free的" -> "这是 free 的", "f r e e的" -> "free 的");
  then, in every token (a run of non-spaces) that holds a letter, the one leetspeak table
  0->o 1->i 3->e 4->a 5->s 7->t @->a $->s ("fr33", "a$$", "f r 3 3"), while a token of digits and
  those symbols alone stays as it is ("455 812", "$455": numbers are not words); then every run of
  one repeated character is collapsed to one, its length kept in `counts` ("freeeee" -> "fre" with
  counts 1,1,5) so the scanner can demand at least a term's own lengths.

This is the pure-Python twin; gateway/policy/normalize.py chooses between it and the compiled
gateway._native.normalize, which does `fold`, `collapse`, `skeleton_pair`, `skeleton` and `run_counts`
in C loops and must give exactly what they give here.
"""
from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from gateway.policy.confusables_data import CONFUSABLES, UPPER_CONFUSABLES

LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
LEET_SYMBOLS = frozenset("$@")  # kept by the fold, read as letters only in a token that has a letter
NOT_LETTERS = "0123456789$@"  # what a token may hold and still be a number, not a word
ARABIC_VARIANTS = {"\u0649": "\u064a", "\u06cc": "\u064a", "\u0629": "\u0647", "\u06a9": "\u0643", "\u0671": "\u0627"}
KEEP_COMPOSED = frozenset("\u00f1\u0439")  # ñ, й: letters of their own, not accented n / и

def _marks_in(first: int, last: int) -> list[str]:
    return [chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c))[0] == "M"]


_DROP = frozenset(
    [chr(c) for c in range(0x0300, 0x0370)]  # combining diacritical marks
    + _marks_in(0x0483, 0x0489)  # Cyrillic titlo and the like; enclosing marks ("f҉r҉e҉e҉")
    + _marks_in(0x1AB0, 0x1AFF)  # combining diacritical marks extended
    + _marks_in(0x1DC0, 0x1DFF)  # combining diacritical marks supplement
    + _marks_in(0x20D0, 0x20FF)  # combining marks for symbols ("f⃝r⃝e⃝e⃝")
    + _marks_in(0xFE20, 0xFE2F)  # combining half marks
    + [chr(c) for c in range(0x064B, 0x0660)]  # Arabic harakat, shadda, sukun, hamza above/below, ...
    + _marks_in(0x0610, 0x061A) + _marks_in(0x06D6, 0x06ED) + _marks_in(0x08D3, 0x08FF)  # Arabic signs, Quranic marks
    + ["\u0670", "\u0640", "\u093c"]  # Arabic superscript alef, tatweel; Devanagari nukta
    + ["\u034f", "\u115f", "\u1160", "\u3164", "\uffa0", "\u17b4", "\u17b5"]  # default-ignorables not Cf
    + [chr(c) for c in range(0x180B, 0x1810)]  # Mongolian variation selectors
    + [chr(c) for c in range(0xFE00, 0xFE10)]  # variation selectors
    + [chr(c) for c in range(0xE0100, 0xE01F0)]  # variation selectors supplement
)

# Scripts written without spaces between words: terms in them match as substrings by default.
UNSPACED_RANGES = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF), (0x3005, 0x3007),
    (0x3021, 0x3029), (0x3038, 0x303C), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF65, 0xFF9F), (0x20000, 0x3134F),
)
UNSPACED = "".join(f"{chr(a)}-{chr(b)}" for a, b in UNSPACED_RANGES)
_UNSPACED_RE = re.compile(f"[{UNSPACED}]")


def _fold_one(ch: str) -> str:
    """The fold of one decomposed code point (see the module docstring)."""
    if ch in _DROP:
        return ""
    if ch in LEET_SYMBOLS:
        return ch
    category = unicodedata.category(ch)
    if category == "Cf":
        return ""
    if category == "Nd":
        return str(unicodedata.decimal(ch))
    if ch in CONFUSABLES:
        return CONFUSABLES[ch]
    if ch in ARABIC_VARIANTS:
        return ARABIC_VARIANTS[ch]
    return ch if category[0] in "LMN" else " "


def fold_char(ch: str) -> str:
    """The fold of one code point, standing alone: possibly empty, possibly several characters."""
    if ch in _DROP or unicodedata.category(ch) == "Cf":
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", ch).casefold()):
        if c in KEEP_COMPOSED:
            out.append(c)
        else:
            out.extend(_fold_one(d) for d in unicodedata.normalize("NFD", c))
    return unicodedata.normalize("NFC", "".join(out))


class _FoldTable(dict):
    """str.translate table computed lazily per code point; bounded so hostile input cannot grow it."""

    LIMIT = 200_000

    def __missing__(self, cp: int) -> str:
        folded = fold_char(chr(cp))
        if len(self) < self.LIMIT:
            self[cp] = folded
        return folded


_FOLD = _FoldTable()
_ASCII = bytes(ord(fold_char(chr(b))) for b in range(128)) + bytes(range(128, 256))


# half-width katakana voiced and semi-voiced sound marks: letters (Lm) to Unicode, but they compose
# with the kana before them under NFKC ("ﾊﾞ" is "バ"), so a cluster holding one is folded whole
SOUND_MARKS = "\uff9e\uff9f"


def _attaches(ch: str) -> bool:
    """Whether `ch` belongs to the cluster of the character before it: a combining mark, a mark that
    folds away (variation selectors and the like), or a half-width sound mark."""
    return (unicodedata.combining(ch) > 0 or ch in SOUND_MARKS
            or (unicodedata.category(ch)[0] == "M" and _FOLD[ord(ch)] == ""))


def needs_clusters(text: str) -> bool:
    """Whether `text` (not ASCII) must be folded cluster by cluster rather than code point by code point."""
    return not unicodedata.is_normalized("NFC", text) or "\uff9e" in text or "\uff9f" in text


def fold(text: str) -> str:
    """`normalize(text)[0]`, without building the index map (the scanner's hot path)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII).decode("ascii")
    if needs_clusters(text):
        return _fold_map(text)[0]
    return text.translate(_FOLD)


def _fold_map(text: str) -> tuple[str, list[int], list[int]]:
    """Folded text and, per folded character, the [start, end) of its cluster in `text`."""
    n = len(text)
    if text.isascii():
        return fold(text), list(range(n)), list(range(1, n + 1))
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    while i < n:
        j = i + 1
        while j < n and _attaches(text[j]):
            j += 1
        cluster = text[i:j] if j == i + 1 else unicodedata.normalize(
            "NFKC" if any(m in SOUND_MARKS for m in text[i + 1:j]) else "NFC", text[i:j])
        piece = cluster.translate(_FOLD)
        if piece:
            pieces.append(piece)
            starts.extend([i] * len(piece))
            ends.extend([j] * len(piece))
        i = j
    return "".join(pieces), starts, ends


def normalize(text: str) -> tuple[str, list[int]]:
    """The folded text and, for every folded character, the index in `text` it came from."""
    folded, starts, _ = _fold_map(text)
    return folded, starts


_CAPITALS_AS_LATIN = str.maketrans(UPPER_CONFUSABLES)
_CAPITALS = "".join(sorted(UPPER_CONFUSABLES))
_CAPITAL_RE = re.compile(f"[{_CAPITALS}]")
# what a word may be made of and still read as Latin once those capitals are: ASCII letters, leet,
# look-alikes of either case, and the invisible characters and accents the fold drops
_LATIN_LIKE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$@\u00ad\ufeff"
                        + "".join(map(chr, [*range(0x200B, 0x2010), *range(0x2060, 0x2065), *range(0x0300, 0x0370)]))
                        + "".join({*CONFUSABLES, *(c.upper() for c in CONFUSABLES), *UPPER_CONFUSABLES}))


def _reads_as_latin(text: str) -> bool:
    """Whether a word of `text` holding one of those capitals is made only of Latin-like characters."""
    n, done = len(text), 0
    for m in _CAPITAL_RE.finditer(text):
        i = m.start()
        if i < done:  # in a word already looked at
            continue
        a = i
        while a and text[a - 1] in _LATIN_LIKE:
            a -= 1
        b = i + 1
        while b < n and text[b] in _LATIN_LIKE:
            b += 1
        done = b
        if not (a and text[a - 1].isalnum()) and not (b < n and text[b].isalnum()):
            return True
    return False


def capitals_as_latin(text: str) -> str | None:
    """`text` with every capital of another script that imitates a Latin capital its small form
    does not (Cyrillic Т, Greek Ε: UPPER_CONFUSABLES) replaced by that Latin letter, code point for
    code point (so spans stay); None when no word of the text would read as Latin that way ("IDIOТ",
    "ВООВ" do; "Ваш", with its ш, does not). The scanner scans this reading too: the fold itself
    keeps those capitals as letters of their script, so "Мудак" and "СТОП" stay Russian."""
    if text.isascii() or _CAPITAL_RE.search(text) is None or not _reads_as_latin(text):
        return None
    return text.translate(_CAPITALS_AS_LATIN)


def is_unspaced(text: str) -> bool:
    """Whether `text` contains a character of a script written without spaces between words."""
    return _UNSPACED_RE.search(text) is not None


# --- skeleton: joining spaced-out letters, closing gaps in unspaced scripts, collapsing runs ----------

def _mark_ranges() -> tuple[tuple[int, int], ...]:
    """[first, last] of every run of marks in the BMP (BMP-only, so sre compiles the class to a
    constant-time bitmap; a mark outside the BMP does not attach in the skeleton)."""
    ranges: list[list[int]] = []
    for cp in range(0x300, 0x10000):
        if unicodedata.category(chr(cp))[0] == "M":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return tuple((a, b) for a, b in ranges)


MARK_RANGES = _mark_ranges()
_MARKS = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in MARK_RANGES)
# Group 1 holds the spaces to drop. JOIN: a space, then >= 3 one-unit tokens (a character and its
# marks) separated by spaces; on ASCII text a unit is one character. GAP: spaces between two
# characters of unspaced scripts.
_JOIN = re.compile(f" ([^ ][{_MARKS}]*(?: +[^ ][{_MARKS}]*(?= )){{2,}})")
_JOIN_ASCII = re.compile(r" ([^ ](?: +[^ ](?= )){2,})")
_GAP = re.compile(f"(?<=[{UNSPACED}])( +)(?=[{UNSPACED}])")  # the blocks hold their own marks
# where a script written without spaces meets another character: a word boundary ("这是free的")
_BOUNDARY = re.compile(f"(?<=[{UNSPACED}])(?=[^ {UNSPACED}])|(?<=[^ {UNSPACED}])(?=[{UNSPACED}])")
_RUNS = re.compile(r"(.)\1+", re.S)
_RUN = re.compile(r"(.)\1*", re.S)


_LEET_TABLE = str.maketrans(LEET)
_LEET_TOKEN = re.compile("[^ ]*[" + re.escape(NOT_LETTERS) + "][^ ]*")
_HAS_LEET = re.compile("[" + re.escape(NOT_LETTERS) + "]")
_HAS_LEET_BYTES = re.compile(b"[" + re.escape(NOT_LETTERS.encode()) + b"]")


def _leet_token(match: re.Match) -> str:
    token = match.group()
    return token.translate(_LEET_TABLE) if token.strip(NOT_LETTERS) else token


def leet_words(joined: str) -> str:
    """The leetspeak table applied in every token (run of non-spaces) of folded text that holds a
    letter; same length, so maps stay."""
    return _LEET_TOKEN.sub(_leet_token, joined) if _HAS_LEET.search(joined) else joined


def _drop_spaces(match: re.Match) -> str:
    keep = match.start(1) - match.start(0)
    whole = match.group(0)
    return whole[:keep] + whole[keep:].replace(" ", "")


def _joined_general(padded: str) -> str:
    unspaced = _UNSPACED_RE.search(padded) is not None
    if unspaced:  # first, so that spaced letters against such a script join too ("f r e e的")
        padded = _BOUNDARY.sub(" ", padded)
    joined = _JOIN.sub(_drop_spaces, padded)
    if unspaced:
        joined = _BOUNDARY.sub(" ", _GAP.sub("", joined))
    return leet_words(joined)


_SWAR: dict[int, tuple[int, int]] = {}


def _swar_consts(n: int) -> tuple[int, int]:
    consts = _SWAR.get(n)
    if consts is None:
        consts = (int.from_bytes(b"\x7f" * n, "big"), int.from_bytes(b"\x80" * n, "big"))
        if len(_SWAR) < 4096:
            _SWAR[n] = consts
    return consts


_TO_X = bytes(0x20 if b == 0x20 else 0x78 for b in range(256))  # space stays, all else -> "x"


def _ascii_pair(padded: bytes) -> tuple[str, str]:
    """(joined, collapsed) for padded, folded ASCII text, with a few C-level passes over the message.

    The join regex runs only if some token is one character long (" x " in the text with every
    non-space made "x"). Runs are found bit-parallel: the message becomes one big integer, XORed with
    itself shifted by a byte, so a byte is zero exactly where it repeats its predecessor; the
    carry-free SWAR test `(((d & 0x7f..) + 0x7f..) | d) & 0x80..` marks the bytes that differ, the
    repeats are zeroed and then deleted."""
    if b" x " in padded.translate(_TO_X):
        joined = _JOIN_ASCII.sub(_drop_spaces, padded.decode("ascii"))
        if len(joined) != len(padded):
            joined = leet_words(joined)
            return joined, _ascii_collapse(joined)
    if _HAS_LEET_BYTES.search(padded) is not None:
        joined = leet_words(padded.decode("ascii"))
        return joined, _ascii_collapse(joined)
    n = len(padded)
    low7, high = _swar_consts(n)
    return padded.decode("ascii"), _collapse_int(int.from_bytes(padded, "big"), n, low7, high)


def _collapse_int(x: int, n: int, low7: int, high: int) -> str:
    d = x ^ (x >> 8)
    differs = (((d & low7) + low7) | d) & high
    if differs != high:
        x &= (differs << 1) - (differs >> 7)
    return x.to_bytes(n, "big").replace(b"\x00", b"").decode("ascii")


def _ascii_collapse(s: str) -> str:
    n = len(s)
    low7, high = _swar_consts(n)
    return _collapse_int(int.from_bytes(s.encode("ascii"), "big"), n, low7, high)


def collapse(s: str) -> str:
    """Every run of one repeated character -> that character (the string form of `Skeleton.counts`).
    ASCII text must not contain NUL (folded text never does)."""
    if not s:
        return s
    if s.isascii():
        return _ascii_collapse(s)
    return "".join(_RUNS.split(s))


def skeleton_pair(text: str) -> tuple[str, str]:
    """(joined, skeleton): the padded folded text after joining and gap closing, and its collapse."""
    folded = fold(text)
    if folded.isascii():
        return _ascii_pair(b" " + folded.encode("ascii") + b" ")
    joined = _joined_general(f" {folded} ")
    return joined, "".join(_RUNS.split(joined))


def run_lengths(joined: str) -> list[int]:
    """The length of every run of `joined`: `Skeleton.counts` for the string `skeleton_pair` gives."""
    return [m.end() - m.start() for m in _RUN.finditer(joined)]


_PLUS_ONE = bytes(min(b + 1, 255) for b in range(256))


def run_counts(joined: str) -> bytes:
    """`run_lengths(joined)` as bytes, each length capped at 255 (terms are at most 200 characters, so
    the scanner's "at least the term's own run length" test is unchanged by the cap)."""
    if joined.isascii() and joined[:1] not in ("", "\x00"):
        n = len(joined)
        low7, high = _swar_consts(n)
        x = int.from_bytes(joined.encode("ascii"), "big")
        d = x ^ (x >> 8)
        starts = ((((d & low7) + low7) | d) & high).to_bytes(n, "big")  # 0x80 where a run starts
        try:  # each piece after a 0x80 is the rest of that run
            return bytes(map(len, starts.split(b"\x80")[1:])).translate(_PLUS_ONE)
        except ValueError:  # a run of more than 256
            pass
    return bytes(min(n, 255) for n in run_lengths(joined))


def skeleton(text: str) -> str:
    """`skeleton_map(text).text`, without the maps (the scanner's hot path)."""
    return skeleton_pair(text)[1]


class Skeleton(NamedTuple):
    """The skeleton of a text: per character, the [start, end) it covers in the original text and the
    length of the run it stands for. The padding spaces map to the empty spans at 0 and len(text)."""

    text: str
    starts: list[int]
    ends: list[int]
    counts: list[int]


def skeleton_map(text: str) -> Skeleton:
    folded, starts, ends = _fold_map(text)
    padded = f" {folded} "
    starts = [0, *starts, len(text)]
    ends = [0, *ends, len(text)]
    unspaced = _UNSPACED_RE.search(padded) is not None
    if unspaced:
        padded, starts, ends = _insert_spaces(_BOUNDARY, padded, starts, ends)
    s, starts, ends = _drop_matched_spaces(_JOIN, padded, starts, ends)
    if unspaced:
        s, starts, ends = _drop_matched_spaces(_GAP, s, starts, ends)
        s, starts, ends = _insert_spaces(_BOUNDARY, s, starts, ends)
    s = leet_words(s)
    out: list[str] = []
    o_starts: list[int] = []
    o_ends: list[int] = []
    counts: list[int] = []
    for m in _RUN.finditer(s):
        a, b = m.span()
        out.append(m.group(1))
        o_starts.append(starts[a])
        o_ends.append(ends[b - 1])
        counts.append(b - a)
    return Skeleton("".join(out), o_starts, o_ends, counts)


def _drop_matched_spaces(pattern: re.Pattern, s: str, starts: list[int], ends: list[int]):
    drop = {i for m in pattern.finditer(s) for i in range(m.start(1), m.end(1)) if s[i] == " "}
    if not drop:
        return s, starts, ends
    keep = [i for i in range(len(s)) if i not in drop]
    return "".join([s[i] for i in keep]), [starts[i] for i in keep], [ends[i] for i in keep]


def _insert_spaces(pattern: re.Pattern, s: str, starts: list[int], ends: list[int]):
    """A space at every (empty) match of `pattern`, mapped to the empty span where the next character starts."""
    at = [m.start() for m in pattern.finditer(s)]
    if not at:
        return s, starts, ends
    out, o_starts, o_ends, last = [], [], [], 0
    for i in at:
        out.append(s[last:i])
        o_starts += starts[last:i]
        o_ends += ends[last:i]
        out.append(" ")
        o_starts.append(starts[i])
        o_ends.append(starts[i])
        last = i
    out.append(s[last:])
    return "".join(out), o_starts + starts[last:], o_ends + ends[last:]
