"""Folding for the sensitive-word scanner: every folded character maps back to the original text, and
the skeleton (joined spaced letters, closed gaps, collapsed runs) keeps exact spans and run lengths."""
import random
import tomllib
from pathlib import Path

import pytest

from gateway.policy.normalize import fold, normalize, run_lengths, skeleton, skeleton_map, skeleton_pair

CORPUS = tomllib.loads((Path(__file__).parent / "data" / "sensitive_corpus.toml").read_text("utf-8"))
CORPUS_TEXTS = [c["text"] for c in CORPUS["hit"] + CORPUS["clean"]]


def test_ascii_is_lowercased_with_an_identity_map():
    assert normalize("Hello World") == ("hello world", list(range(11)))


def test_punctuation_symbols_and_emoji_become_spaces():
    assert normalize("hi!🔥(x)")[0] == "hi   x "


def test_fullwidth_letters_fold_through_nfkc():
    assert normalize("ＦＲＥＥ") == ("free", [0, 1, 2, 3])


def test_case_folding_expands_and_maps_every_output_to_its_source():
    assert normalize("Straße") == ("strasse", [0, 1, 2, 3, 4, 4, 5])


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff", "\ufe0f"])
def test_default_ignorables_are_removed_and_skipped_by_the_map(invisible):
    assert normalize(f"fr{invisible}ee") == ("free", [0, 1, 3, 4])


def test_latin_diacritics_are_removed_whether_composed_or_not():
    assert fold("Crème brûlée") == fold("Cre\u0300me bru\u0302le\u0301e") == "creme brulee"


def test_enye_stays_a_letter_of_its_own_whether_composed_or_not():
    assert fold("año") == fold("an\u0303o") == "año"
    assert fold("año") != fold("ano")


def test_decomposed_marks_map_to_their_base_letter():
    assert normalize("e\u0301x") == ("ex", [0, 2])


def test_cyrillic_and_greek_look_alikes_fold_to_latin():
    assert fold("frее") == "free"  # Cyrillic е
    assert fold("bοοk") == "book"  # Greek ο


def test_uppercase_look_alikes_are_case_folded_before_the_confusable_table():
    assert fold("FRЕЕ") == "free"  # Cyrillic Е


def test_the_fold_keeps_digits_and_the_leet_symbols():
    assert fold("0 1 3 4 5 7 @ $ 2") == "0 1 3 4 5 7 @ $ 2"


def test_leetspeak_uses_one_documented_table_in_words():
    assert skeleton("fr33 w1n $ex @ss a0 b1 c3 d4 e5 f7") == " fre win sex as ao bi ce da es ft "
    assert skeleton("f r 3 3") == " fre "  # joined first, then read as a word


@pytest.mark.parametrize("text", ["Your code is 455 812", "Total: $455", "455$", "(717) 555-0100", "@ 7:30",
                                  "٤٥٥ ريال", "४५५"])
def test_numbers_are_not_read_as_leetspeak(text):
    folded = skeleton(text)
    assert "ass" not in folded and " as " not in folded and "tit" not in folded


def test_other_digits_stay_digits():
    assert skeleton("26 89 x2") == " 26 89 x2 "


def test_arabic_indic_digits_become_ascii():
    assert fold("٢٠٢٦") == fold("۲۰۲۶") == "2026"


def test_arabic_harakat_and_tatweel_are_removed():
    assert fold("مَجَّانِي") == fold("مجـــاني") == "مجاني"


def test_arabic_letter_variants_are_unified():
    assert fold("أ إ آ ٱ") == "ا ا ا ا"
    assert fold("غبى") == "غبي"
    assert fold("حقيرة") == "حقيره"


def test_devanagari_nukta_is_removed_combining_or_precomposed():
    assert fold("मुफ\u093c्त") == fold("मु\u095e्त") == "मुफ्त"
    assert fold("\u0958") == "क"


def test_devanagari_vowel_signs_and_virama_are_kept():
    assert fold("कुत्ता") == "कुत्ता"


def test_zwj_and_zwnj_are_removed_from_devanagari():
    assert fold("मुफ्\u200cत") == fold("मुफ्\u200dत") == "मुफ्त"


def test_cjk_passes_through():
    assert normalize("免费") == ("免费", [0, 1])


def test_astral_characters_index_as_one_code_point():
    assert normalize("👍🏽free") == ("  free", [0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("text", CORPUS_TEXTS)
def test_fold_is_the_text_of_normalize(text):
    assert fold(text) == normalize(text)[0]


@pytest.mark.parametrize("text", CORPUS_TEXTS)
def test_folding_is_idempotent(text):
    assert fold(fold(text)) == fold(text)


def test_skeleton_joins_three_or_more_spaced_letters():
    assert skeleton("get f r e e now") == " get fre now "


def test_skeleton_joins_dotted_and_dashed_letters():
    assert skeleton("f.r.e.e") == skeleton("f-r-e-e") == skeleton("free") == " fre "


def test_skeleton_leaves_two_single_letters_apart():
    assert skeleton("a b cd") == " a b cd "


def test_skeleton_collapses_runs_and_keeps_their_lengths():
    sk = skeleton_map("freeeee!")
    assert sk.text == " fre "
    assert sk.counts == [1, 1, 1, 5, 2]


def test_skeleton_spans_cover_joined_and_stretched_letters_exactly():
    text = "x f r e e e y"
    sk = skeleton_map(text)
    i = sk.text.index("fre")
    assert (sk.starts[i], sk.ends[i + 2]) == (2, 11)
    assert text[2:11] == "f r e e e"


def test_skeleton_span_of_a_letter_includes_its_combining_marks():
    text = "fre\u0301e\u0301!"
    sk = skeleton_map(text)
    assert sk.text == " fre "
    assert sk.ends[3] == 6


def test_skeleton_closes_gaps_between_unspaced_script_characters():
    assert skeleton("免 费。送") == " 免费送 "


def test_skeleton_keeps_the_gap_between_unspaced_and_spaced_words():
    assert skeleton("免费 free") == " 免费 fre "


def test_run_lengths_of_the_joined_text_are_the_skeleton_counts():
    joined, _ = skeleton_pair("boooob  is")
    assert run_lengths(joined) == skeleton_map("boooob  is").counts


@pytest.mark.parametrize("text", CORPUS_TEXTS)
def test_fast_skeleton_equals_the_mapped_skeleton_on_the_corpus(text):
    assert skeleton(text) == skeleton_map(text).text


def test_fast_skeleton_equals_the_mapped_skeleton_on_random_text():
    alphabet = list("aabeeffrrs  ..-_13@$ЕеАоñ免费कुऩ्तاَـى٣ßＦ") + [
        "\u0301", "\u0303", "\u093c", "\u0958", "\u200b", "\u200d", "\ufe0f", "👍", "🏽",
    ]
    rng = random.Random(5)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        sk = skeleton_map(text)
        assert skeleton(text) == sk.text, repr(text)
        assert len(sk.starts) == len(sk.ends) == len(sk.counts) == len(sk.text)
        assert all(0 <= a <= b <= len(text) for a, b in zip(sk.starts, sk.ends))


def test_a_word_against_an_unspaced_script_is_bounded_by_spaces_mapped_to_empty_spans():
    sk = skeleton_map("这是free的3个")
    assert sk.text == " 这是 fre 的 3 个 " == skeleton("这是free的3个")
    i = sk.text.index("fre")
    assert (sk.starts[i - 1], sk.ends[i - 1]) == (2, 2)  # the space put before "free"
    assert (sk.starts[i], sk.ends[i + 2]) == (2, 6)
