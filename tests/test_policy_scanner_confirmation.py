"""A candidate key with collapsed runs is confirmed in one of two ways, chosen by the normalize twin in
use: by the run lengths at its own position (native) or by a regex over the joined text (pure Python,
where `run_counts` is slow). Both must give exactly the hits of the full mapped scan, whichever twin
runs the test: neither may drop a hit nor let a text through to the mapped scan that has none."""
import random
import tomllib
from pathlib import Path

import pytest

from gateway.policy import normalize
from gateway.policy.scanner import Scanner, Term

CORPUS = tomllib.loads((Path(__file__).parent / "data" / "sensitive_corpus.toml").read_text("utf-8"))
CORPUS_TEXTS = [c["text"] for c in CORPUS["hit"] + CORPUS["clean"]]


class CountingScanner(Scanner):
    """A Scanner that counts the texts its confirmation passes on to the mapped scan."""

    def _exact_hits(self, text):
        self.mapped = getattr(self, "mapped", 0) + 1
        return super()._exact_hits(text)


CORPUS_SCANNER = CountingScanner.build({category: [Term(t) for ts in by_lang.values() for t in ts]
                                        for category, by_lang in CORPUS["terms"].items()})

# Terms sharing skeletons but not run lengths, runs at the start, middle and end, a multi-word term,
# substring terms (CJK by default, Latin by override) and a term whose run is a non-ASCII letter.
RUN_TERMS = {
    "insult": [Term("ass"), Term("as"), Term("boob"), Term("bob"), Term("bbob"), Term("booobs")],
    "spam": [Term("free"), Term("free money"), Term("aab", whole_word=False), Term("哈哈"), Term("ёё")],
}
PIECES = ["a", "s", "ss", "b", "o", "oo", "f", "r", "e", "ee", "m", "n", "y", " ", "  ", ".", "-", "!",
          "哈", "ё", "е", "\u0435", "ａ", "\u200b", "\u0301", "5", "0", "@"]


def assert_confirmations_agree(scanner: CountingScanner, text: str) -> None:
    exact = Scanner._exact_hits(scanner, text)
    for scan in (scanner._scan_by_counts, scanner._scan_by_patterns):
        scanner.mapped = 0
        assert scan(text) == exact, (scan.__name__, text)
        assert scanner.mapped == (1 if exact else 0), (scan.__name__, text)


@pytest.mark.parametrize("text", CORPUS_TEXTS)
def test_both_confirmations_give_the_mapped_hits_on_the_corpus(text):
    assert_confirmations_agree(CORPUS_SCANNER, text)


def test_both_confirmations_give_the_mapped_hits_on_random_runs():
    scanner = CountingScanner.build(RUN_TERMS)
    rng = random.Random(53)
    for _ in range(4000):
        assert_confirmations_agree(scanner, "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 24))))


def test_both_confirmations_demand_each_terms_own_run_lengths():
    scanner = Scanner.build(RUN_TERMS)
    for text, terms in [("as", ["as"]), ("asss", ["as", "ass"]), ("bob", ["bob"]), ("bboob", ["bbob", "bob", "boob"]),
                        ("booob", ["bob", "boob"]), ("boooobs", ["booobs"]), ("fre", []),
                        ("freee  mmoney", ["free", "free money"]), ("xaabx", ["aab"]), ("xabx", []), ("哈", []),
                        ("哈 哈哈", ["哈哈"]), ("ёёё", ["ёё"])]:
        for scan in (scanner._scan_by_counts, scanner._scan_by_patterns):
            assert sorted(h.term for h in scan(text)) == terms, (scan.__name__, text)


def test_the_scan_in_use_is_the_cheaper_one_for_the_normalize_twin():
    expected = Scanner._scan_by_counts if normalize.IMPLEMENTATION == "native" else Scanner._scan_by_patterns
    assert Scanner._scan_one is expected
