"""The sensitive-word scanner: the corpus hits exactly what it must and nothing else, in every
language and through every evasion; spans index the original text and masks replace only them."""
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.policy import scanner as scanner_module
from gateway.policy.scanner import Hit, Scanner, Term, mask

CORPUS = tomllib.loads((Path(__file__).parent / "data" / "sensitive_corpus.toml").read_text("utf-8"))


def corpus_scanner() -> Scanner:
    terms = CORPUS["terms"].items()
    return Scanner.build({category: [Term(t) for ts in by_lang.values() for t in ts] for category, by_lang in terms})


SCANNER = corpus_scanner()


def spans(scanner: Scanner, text: str) -> list[tuple[str, str]]:
    return [(h.term, text[h.start:h.end]) for h in scanner.scan(text)]


@pytest.mark.parametrize("case", CORPUS["hit"], ids=lambda c: f"{c['lang']}-{c['how']}")
def test_corpus_case_hits_exactly_its_terms(case):
    assert sorted({h.term for h in SCANNER.scan(case["text"])}) == sorted(case["terms"])


@pytest.mark.parametrize("case", CORPUS["clean"], ids=lambda c: f"{c['lang']}-{c['why']}")
def test_corpus_benign_text_is_clean(case):
    assert SCANNER.scan(case["text"]) == []


def test_corpus_covers_every_language_with_hits_and_benign_text():
    langs = {lang for by_lang in CORPUS["terms"].values() for lang in by_lang}
    assert langs == {"en", "es", "ru", "hi", "ar", "zh"}
    assert langs <= {c["lang"] for c in CORPUS["hit"]}
    assert langs <= {c["lang"] for c in CORPUS["clean"]}


def test_hit_carries_term_category_and_original_span():
    assert SCANNER.scan("Get your free gift") == [Hit("free", "spam", 9, 13)]


def test_hits_are_ordered_by_span():
    hits = SCANNER.scan("idiot, win this free money")
    assert [h.term for h in hits] == ["idiot", "win", "free", "free money"]


def test_span_covers_spaced_letters():
    assert spans(SCANNER, "get f r e e now") == [("free", "f r e e")]


def test_span_covers_stretched_letters():
    assert spans(SCANNER, "so freeeeee!") == [("free", "freeeeee")]


def test_span_covers_zero_width_characters_inside_the_word():
    assert spans(SCANNER, "a fr\u200bee\u200b gift") == [("free", "fr\u200bee")]


def test_span_includes_the_combining_marks_of_its_last_letter():
    text = "fre\u0301e\u0301 time"
    assert spans(SCANNER, text) == [("free", "fre\u0301e\u0301")]


def test_span_after_astral_emoji_indexes_code_points():
    text = "👍🏽🔥 free"
    assert SCANNER.scan(text)[0].start == 4


def test_span_in_unspaced_script_is_the_substring():
    assert spans(SCANNER, "这是免费的") == [("免费", "免费")]


def test_span_with_arabic_harakat_and_tatweel():
    text = "شحن مَجَّـانِي اليوم"
    assert spans(SCANNER, text) == [("مجاني", "مَجَّـانِي")]


def test_mask_replaces_exactly_the_span():
    text = "Get your free gift"
    assert mask(text, SCANNER.scan(text)) == "Get your **** gift"


def test_mask_preserves_emoji_and_combining_marks_outside_spans():
    text = "👍🏽 ne\u0301e, free ✨ cafe\u0301"
    assert mask(text, SCANNER.scan(text)) == "👍🏽 ne\u0301e, **** ✨ cafe\u0301"


def test_mask_drops_combining_marks_and_invisibles_inside_a_span_with_their_letter():
    text = "fr\u200bee\u0301!"
    assert mask(text, SCANNER.scan(text)) == "****!"


def test_mask_gives_one_character_per_devanagari_letter():
    text = "तुम कुत्ता हो"
    assert mask(text, SCANNER.scan(text)) == "तुम *** हो"


def test_mask_merges_overlapping_hits():
    text = "free money!"
    assert mask(text, SCANNER.scan(text)) == "**********!"


def test_mask_uses_the_given_character():
    text = "w1n"
    assert mask(text, SCANNER.scan(text), char="#") == "###"


def test_mask_without_hits_returns_the_text():
    assert mask("hello", []) == "hello"


def test_latin_terms_default_to_whole_words():
    scanner = Scanner.build({"spam": [Term("free")]})
    assert scanner.scan("carefree") == []


def test_unspaced_script_terms_default_to_substrings():
    scanner = Scanner.build({"spam": [Term("免费")]})
    assert len(scanner.scan("这是免费的")) == 1


def test_whole_word_override_false_matches_inside_words():
    scanner = Scanner.build({"spam": [Term("free", whole_word=False)]})
    assert spans(scanner, "carefree") == [("free", "free")]


def test_whole_word_override_true_needs_boundaries_in_unspaced_scripts():
    scanner = Scanner.build({"spam": [Term("免费", whole_word=True)]})
    assert scanner.scan("这是免费的") == []
    assert spans(scanner, "免费!") == [("免费", "免费")]


def test_same_term_in_two_categories_hits_once_per_category():
    scanner = Scanner.build({"spam": [Term("free")], "promo": [Term("free")]})
    assert [h.category for h in scanner.scan("free")] == ["promo", "spam"]


def test_duplicate_terms_hit_once():
    scanner = Scanner.build({"spam": [Term("free"), Term("FREE")]})
    assert [h.term for h in scanner.scan("free")] == ["FREE", "free"]
    assert len(Scanner.build({"spam": [Term("free"), Term("free")]}).scan("free")) == 1


def test_run_lengths_are_required_per_term_sharing_a_skeleton():
    scanner = Scanner.build({"x": [Term("bob"), Term("boob")]})
    assert [h.term for h in scanner.scan("Bob")] == ["bob"]
    assert [h.term for h in scanner.scan("booob")] == ["bob", "boob"]


def test_term_given_with_evasions_matches_the_plain_word():
    scanner = Scanner.build({"spam": [Term("F.R.3.3")]})
    assert len(scanner.scan("free")) == 1


def test_capitals_that_imitate_latin_capitals_fold_only_as_capitals():
    scanner = Scanner.build({"x": [Term("bot"), Term("het"), Term("kot"), Term("mama")]})
    assert scanner.scan("нет, вот так: кот и мама") == []  # small Cyrillic letters look like no Latin ones
    assert scanner.scan("Нет, Вот так") == []  # nor a capital in a word of small ones
    assert {h.term for h in scanner.scan("НЕТ ВОТ КОТ МАМА")} == {"bot", "het", "kot", "mama"}


def test_a_term_with_such_letters_matches_in_any_case():
    for given in ("мудак", "МУДАК", "Мудак", "тварь"):
        scanner = Scanner.build({"x": [Term(given)]})
        texts = ("мудак", "МУДАК", "Мудак!", "мУДАк") if given != "тварь" else ("Тварь", "ТВАРЬ", "тварь")
        assert [len(scanner.scan(t)) for t in texts] == [1] * len(texts), given
    greek = Scanner.build({"x": [Term("βλάκας")]})
    assert [len(greek.scan(t)) for t in ("Βλάκας", "ΒΛΑΚΑΣ", "βλάκας")] == [1, 1, 1]


def test_a_multi_word_term_with_a_number_matches_written_as_one_word():
    scanner = Scanner.build({"x": [Term("win 100"), Term("earn 500")]})
    assert [h.term for h in scanner.scan("win100 now, earn500 daily")] == ["win 100", "earn 500"]


def test_half_width_kana_with_sound_marks_match_their_full_width_forms():
    for term in ("バカ", "ﾊﾞｶ"):  # (a half-width term is of an unspaced script too: a substring)
        scanner = Scanner.build({"x": [Term(term)]})
        assert [(h.start, h.end) for h in scanner.scan("お前はﾊﾞｶだ")] == [(3, 6)], term
        assert [(h.start, h.end) for h in scanner.scan("お前はバカだ")] == [(3, 5)], term
        assert scanner.scan("ﾊﾟｶ") == []  # the semi-voiced mark makes another kana


def test_spaced_letters_against_an_unspaced_script_are_joined():
    assert [(h.start, h.end) for h in Scanner.build({"x": [Term("free")]}).scan("f r e e的礼物")] == [(0, 7)]


def test_term_without_letters_or_digits_is_refused():
    with pytest.raises(ValueError):
        Scanner.build({"spam": [Term("!!!")]})


def test_empty_scanner_finds_nothing():
    scanner = Scanner.build({})
    assert len(scanner) == 0
    assert scanner.scan("free") == []


def test_len_counts_terms():
    assert len(Scanner.build({"a": [Term("x1"), Term("y")], "b": [Term("z")]})) == 3


def test_scanner_cannot_be_modified():
    with pytest.raises(AttributeError):
        SCANNER.extra = 1  # type: ignore[attr-defined]


def held_by_scanner(texts: list[str]) -> list[bool]:
    # texts[i] is referenced by `texts`, by getrefcount's argument and, while its automaton lives, by its entry
    return [sys.getrefcount(texts[i]) > 2 for i in range(len(texts))]


def test_release_frees_the_automata_one_at_a_time_in_shard_order(monkeypatch):
    monkeypatch.setattr(scanner_module, "SHARD_KEYS", 4)
    texts = ["".join(("word", c)) for c in "abcdefghij"]  # built at run time: not shared with constants
    scanner = Scanner.build({"c": [Term(t) for t in texts]})
    assert scanner.shards == 3
    shard_of = {texts.index(e.term): n for n, a in enumerate(scanner._automata) for k in a.values() for e in k.entries}
    assert held_by_scanner(texts) == [True] * 10
    after_each = []
    scanner.release(lambda: after_each.append(held_by_scanner(texts)))
    assert after_each == [[shard_of[i] > step for i in range(10)] for step in range(3)]


def test_a_released_scanner_refuses_to_scan():
    scanner = Scanner.build({"spam": [Term("free")]})
    scanner.release(lambda: None)
    with pytest.raises(RuntimeError, match="released"):
        scanner.scan("free")
