"""The native folding (gateway._native.normalize) gives exactly what its pure twin gives, code point for
code point: on the multilingual corpus and on random text full of what evasion and real messages use
(combining marks, emoji and their modifiers, right-to-left scripts, zero-width and format characters,
spaced letters, long runs, any code point but surrogates)."""
import os
import random
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.policy import normalize, normalize_py

CORPUS = tomllib.loads((Path(__file__).parent / "data" / "sensitive_corpus.toml").read_text("utf-8"))
CORPUS_TEXTS = [c["text"] for c in CORPUS["hit"] + CORPUS["clean"]] + [
    t for terms in CORPUS["terms"].values() for lang in terms.values() for t in lang]

PIECES = list("aabeeffrrs  ..-_13@$ЕеАоñ免费कुऩ्तاَـى٣ßＦﬁ") + [
    "\u0301", "\u0303", "\u0327", "\u093c", "\u0958", "\u064b", "\u0670", "\u0640",  # marks, tatweel
    "\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff", "\ufe0f", "\U000e0101", "\u180b",  # invisible
    "\u200f", "\u202e", "\u061c",  # bidi controls
    "שלום", "مرحبا", "ไทย", "カタカナ", "한국어", "\u3000", "\t", "\n",
    "👍", "🏽", "👨\u200d👩\u200d👧", "🇫🇷", "\U0001d400", "\U0001d165", "\U00020000",  # astral
    "Ⅻ", "①", "½", "ǅ", "İ", "ς", "ẞ", "\ufdfa",  # NFKC and case expansions
]


def native_module():
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        pytest.skip("GATEWAY_PURE_PYTHON=1: native normalize deliberately disabled")
    try:
        return normalize.load("native")
    except ImportError as exc:
        pytest.fail(f"native normalize not built ({exc}); run `python setup.py build_ext --inplace`")


def assert_twins_agree(native, text: str) -> None:
    assert native.fold(text) == normalize_py.fold(text), repr(text)
    pair = native.skeleton_pair(text)
    assert pair == normalize_py.skeleton_pair(text), repr(text)
    assert native.skeleton(text) == normalize_py.skeleton(text) == pair[1], repr(text)
    assert native.run_counts(pair[0]) == normalize_py.run_counts(pair[0]), repr(text)
    assert native.collapse(text) == normalize_py.collapse(text), repr(text)


def random_code_point(rng: random.Random) -> str:
    while True:
        cp = rng.randrange(sys.maxunicode + 1)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


@pytest.mark.parametrize("text", CORPUS_TEXTS)
def test_native_equals_pure_on_the_corpus(text):
    assert_twins_agree(native_module(), text)


def test_native_equals_pure_on_random_pieces():
    native = native_module()
    rng = random.Random(41)
    for _ in range(4000):
        assert_twins_agree(native, "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30))))


def test_native_equals_pure_on_random_code_points():
    native = native_module()
    rng = random.Random(43)
    for _ in range(3000):
        text = "".join(random_code_point(rng) if rng.random() < 0.3 else rng.choice(PIECES)
                       for _ in range(rng.randint(0, 40)))
        assert_twins_agree(native, text)


def test_native_equals_pure_on_long_text_beyond_the_stack_buffers():
    native = native_module()
    rng = random.Random(47)
    for size in (511, 512, 513, 2000, 20000):
        assert_twins_agree(native, "".join(rng.choice(PIECES) for _ in range(size)))
        assert_twins_agree(native, "f r e e " * (size // 8))


def test_run_counts_cap_long_runs_at_255_in_both_twins():
    native = native_module()
    joined = " " + "e" * 300 + "x" + "\u0435" * 256 + " "
    expected = bytes([1, 255, 1, 255, 1])
    assert normalize_py.run_counts(joined) == native.run_counts(joined) == expected


def test_the_scanner_uses_the_chosen_implementation():
    expected = "pure" if os.environ.get("GATEWAY_PURE_PYTHON") == "1" or not normalize.NATIVE_AVAILABLE else "native"
    assert normalize.IMPLEMENTATION == expected
    assert normalize.skeleton_pair is normalize.load(expected).skeleton_pair
