"""The sensitive-word policy as a pure core: word lists per category with their action, compiled per
workspace into immutable `Rules`, and the verdict they give on one text (block, review, mask, flag;
the hits with their spans in the text as sent; the text to send, masked where a mask list hit).

No I/O, no clock, no per-message state: the shell (`policy/service.py`) loads the lists, builds
`Rules` off the event loop and swaps them into the `Engine` whole, so a scan never sees half a change.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.config import Name
from gateway.decoding import DECODE_ERRORS
from gateway.policy.scanner import Hit, Scanner, Term, mask

Action = Literal["block", "mask", "flag", "review"]
# Strongest first: the verdict of a text is the strongest action among its hits.
SEVERITY = {"block": 3, "review": 2, "mask": 1, "flag": 0}
MAX_TERMS = 200_000
MAX_TERM_CHARS = 200
Category = Name  # a word list's category: named like a workspace


class TermSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """A term with its own matching option; a bare string in a list is a term with the list's."""

    text: Annotated[str, Meta(min_length=1, max_length=MAX_TERM_CHARS)]
    whole_word: bool | None = None


TermInput = Annotated[str, Meta(min_length=1, max_length=MAX_TERM_CHARS)] | TermSpec


class WordList(Struct, frozen=True, forbid_unknown_fields=True):
    """One category's list, as written in `configs/sensitive-words/<category>.toml` or PUT through
    the admin API. `whole_word`: None = whole words in scripts written with spaces, substrings in
    scripts written without (CJK, Thai, ...); true / false force one for every term without its own."""

    action: Action
    terms: Annotated[list[TermInput], Meta(max_length=MAX_TERMS)]
    whole_word: bool | None = None

    def scanner_terms(self) -> Iterator[Term]:
        """Lazily, so a builder that pauses between terms never spends long making them all."""
        default = self.whole_word
        for t in self.terms:
            if isinstance(t, str):
                yield Term(t, default)
            else:
                yield Term(t.text, t.whole_word if t.whole_word is not None else default)

    def view(self) -> dict:
        return {
            "action": self.action,
            "whole_word": self.whole_word,
            "terms": [t if isinstance(t, str) else msgspec.to_builtins(t) for t in self.terms],
        }


PIECE_BYTES = 32_768  # a list body is decoded in pieces of about this size (~0.3 ms of C each)
_WORD_LIST = msgspec.json.Decoder(WordList)
_TERMS = msgspec.json.Decoder(list[TermInput])
_PIECE_END = re.compile(rb'["}]\s*,')  # a comma after a string or an object: maybe between two terms


class _ListShape(Struct, frozen=True, forbid_unknown_fields=True):
    action: Action
    terms: msgspec.Raw
    whole_word: bool | None = None


_SHAPE = msgspec.json.Decoder(_ListShape)
_JSON_WS = rb"[ \t\n\r]*"
# The usual body, {"action": "...", "terms": [...] (, "whole_word": ...)}, read around its terms
# without decoding the whole body in one C call (~2 ms for 1 MB); any other shape goes through _SHAPE.
_HEAD = re.compile(rb"\A" + _JSON_WS + rb'\{' + _JSON_WS + rb'"action"' + _JSON_WS + rb":" + _JSON_WS
                   + rb'"(block|mask|flag|review)"' + _JSON_WS + rb"," + _JSON_WS + rb'"terms"' + _JSON_WS
                   + rb":" + _JSON_WS + rb"(?=\[)")
_TAIL = re.compile(rb"\]" + _JSON_WS + rb"(?:," + _JSON_WS + rb'"whole_word"' + _JSON_WS + rb":" + _JSON_WS
                   + rb"(true|false|null)" + _JSON_WS + rb")?\}" + _JSON_WS + rb"\Z")
_TAIL_BYTES = 128  # how far from the end the tail is looked for
_WHOLE_WORD = {None: None, b"null": None, b"true": True, b"false": False}


def decode_word_list(body: bytes, pause: Callable[[], None] | None = None) -> WordList:
    """`msgspec.json.decode(body, type=WordList)`: the same list, or the same DecodeError. A body
    larger than PIECE_BYTES has its terms decoded in pieces, calling `pause` between them, so no
    single C call holds the GIL for long (a 100,000-term body takes ~10 ms in one call).

    Pieces end at a comma after a string or an object. One that is not between two terms (inside a
    string or an object) leaves its piece an unterminated string or object, which fails to decode;
    then, and for any other error, the whole body is decoded in one call for the exact error."""
    if len(body) <= PIECE_BYTES:
        return _WORD_LIST.decode(body)
    try:
        head = _HEAD.match(body)
        tail = _TAIL.search(body, max(0, len(body) - _TAIL_BYTES)) if head is not None else None
        if tail is not None and tail.start() >= head.end():
            # What lies between is one array exactly when its pieces all decode (see _decode_terms).
            action, raw, whole_word = head[1].decode(), body[head.end():tail.start() + 1], _WHOLE_WORD[tail[1]]
        else:
            shape = _SHAPE.decode(body)  # one call over the whole body, ~2 ms for 1 MB: a pause after it
            if pause is not None:
                pause()
            action, raw, whole_word = shape.action, bytes(shape.terms).strip(), shape.whole_word
        terms = _decode_terms(raw, pause)
    except DECODE_ERRORS:
        terms = None
    if terms is None or len(terms) > MAX_TERMS:
        return _WORD_LIST.decode(body)
    return WordList(action, terms, whole_word)


def _decode_terms(raw: bytes, pause: Callable[[], None] | None) -> list | None:
    if raw[:1] != b"[" or raw[-1:] != b"]":
        return None
    end = len(raw) - 1
    terms: list = []
    start = 1
    while start < end:
        m = _PIECE_END.search(raw, min(start + PIECE_BYTES, end), end)
        stop = m.end() - 1 if m is not None else end  # the comma, or the closing bracket
        terms.extend(_TERMS.decode(b"[" + raw[start:stop] + b"]"))
        start = stop + 1
        if pause is not None:
            pause()
    return terms


class PolicyHit(Struct, frozen=True, array_like=True):
    """A hit with the action of its category; `start`/`end` index the text as sent (code points)."""

    term: str
    category: str
    action: str
    start: int
    end: int

    def view(self, text: str) -> dict:
        return {"term": self.term, "category": self.category, "action": self.action,
                "start": self.start, "end": self.end, "matched": text[self.start:self.end]}


MAX_REPORTED_HITS = 32  # hits a verdict reports and stores; masking and the action use them all


class Verdict(Struct, frozen=True):
    """What the lists say about one text: `action` is the strongest among all hits; `text` is what
    may be sent (masked where a mask list hit; unchanged otherwise; irrelevant for block).
    `hits` reports each distinct (term, category) once, at its first span, at most
    MAX_REPORTED_HITS of them; `hit_count` counts every occurrence. A text made of one term
    repeated thousands of times thus costs a bounded reply, record and metric update."""

    action: str
    hits: list[PolicyHit]
    text: str
    hit_count: int = 0

    def flagged(self) -> list[PolicyHit]:
        return [h for h in self.hits if h.action == "flag"]

    def view(self, original: str) -> dict:
        return {"action": self.action, "hits": [h.view(original) for h in self.hits],
                "hit_count": self.hit_count or len(self.hits)}


def _reported(hits: list[PolicyHit]) -> list[PolicyHit]:
    seen: set[tuple[str, str]] = set()
    out = []
    for h in hits:
        key = (h.term, h.category)
        if key not in seen:
            seen.add(key)
            out.append(h)
            if len(out) == MAX_REPORTED_HITS:
                break
    return out


class Rules:
    """One workspace's lists compiled: immutable once built (safe to share and to swap)."""

    __slots__ = ("scanner", "actions", "lists")

    def __init__(self, scanner: Scanner, lists: Mapping[str, WordList]) -> None:
        self.scanner = scanner
        self.lists = dict(lists)
        self.actions = {category: wl.action for category, wl in lists.items()}

    @classmethod
    def build(cls, lists: Mapping[str, WordList], pause: Callable[[], None] | None = None) -> Rules | None:
        """None when no list has a term (nothing to scan). ValueError names a term that cannot match."""
        terms = {category: wl.scanner_terms() for category, wl in lists.items() if wl.terms}
        if not terms:
            return None
        return cls(Scanner.build(terms, pause), lists)

    def verdict(self, text: str) -> Verdict | None:
        """None when nothing hits (the common case: one scan, no allocation beyond it)."""
        hits = self.scanner.scan(text)
        if not hits:
            return None
        actions = self.actions
        policy_hits = [PolicyHit(h.term, h.category, actions[h.category], h.start, h.end) for h in hits]
        action = max((h.action for h in policy_hits), key=SEVERITY.__getitem__)
        masked: Iterable[Hit] = [h for h in hits if actions[h.category] == "mask"]
        return Verdict(action, _reported(policy_hits), mask(text, masked) if masked else text,
                       len(policy_hits))


class Engine:
    """The compiled rules of every workspace. Readers call `verdict`; the shell replaces rules with
    `swap` / `set_workspace` / `drop_workspace`, each a single reference assignment, so a verdict uses
    one consistent set. Each returns the rules it no longer holds, for the shell to free off the
    event loop (a 100,000-term set takes tens of milliseconds to free)."""

    __slots__ = ("_default", "_by_workspace")

    def __init__(self) -> None:
        self._default: Rules | None = None  # lists that apply to every workspace (files without `workspaces`)
        self._by_workspace: dict[str, Rules | None] = {}

    def verdict(self, workspace: str, text: str) -> Verdict | None:
        rules = self._by_workspace.get(workspace, self._default)
        if rules is None:
            return None
        return rules.verdict(text)

    def active(self, workspace: str) -> bool:
        return self._by_workspace.get(workspace, self._default) is not None

    def rules(self, workspace: str) -> Rules | None:
        return self._by_workspace.get(workspace, self._default)

    def swap(self, default: Rules | None, by_workspace: dict[str, Rules | None]) -> list[Rules]:
        old = self._held()
        self._default, self._by_workspace = default, dict(by_workspace)
        return self._let_go(old)

    def set_workspace(self, workspace: str, rules: Rules | None) -> list[Rules]:
        old = self._held()
        self._by_workspace = {**self._by_workspace, workspace: rules}
        return self._let_go(old)

    def drop_workspace(self, workspace: str) -> list[Rules]:
        """The workspace has no lists of its own any more: the default set applies to it again."""
        old = self._held()
        self._by_workspace = {ws: r for ws, r in self._by_workspace.items() if ws != workspace}
        return self._let_go(old)

    def _held(self) -> dict[int, Rules]:
        held = {id(r): r for r in self._by_workspace.values() if r is not None}
        if self._default is not None:
            held[id(self._default)] = self._default
        return held

    def _let_go(self, old: dict[int, Rules]) -> list[Rules]:
        """The rule sets of `old` that the engine holds no more."""
        new = self._held()
        return [r for key, r in old.items() if key not in new]


def effective_lists(files: Mapping[str, tuple[WordList, tuple[str, ...] | None]],
                    api: Mapping[str, WordList], workspace: str | None) -> dict[str, WordList]:
    """The lists that apply to `workspace` (None: to a workspace with no lists of its own): the file
    lists that name it or name no workspace, then its API lists, which replace a file list of the
    same category (an API list with no terms switches that category off for the workspace)."""
    out = {}
    for category, (wl, workspaces) in files.items():
        if workspaces is None or (workspace is not None and workspace in workspaces):
            out[category] = wl
    out.update(api)
    return out


def dedicated_workspaces(files: Mapping[str, tuple[WordList, tuple[str, ...] | None]],
                         api_workspaces: Iterable[str]) -> set[str]:
    """Workspaces whose lists differ from the default set: named by a file, or with API lists."""
    named = {ws for _, workspaces in files.values() if workspaces for ws in workspaces}
    return named | set(api_workspaces)
