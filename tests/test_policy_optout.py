"""STOP / START keywords as a pure core: the default languages, folding of the inbound text, exact
whole-message matching, configured replacements and refused configurations."""
import msgspec
import pytest

from gateway.policy.optout import DEFAULT_LANGUAGES, LanguageKeywords, OptOutKeywords
from gateway.policy.settings import PolicyConfig

KEYWORDS = OptOutKeywords.build(DEFAULT_LANGUAGES)


@pytest.mark.parametrize("text,lang", [
    ("STOP", "en"), ("Unsubscribe", "en"), ("रोकें", "hi"), ("إلغاء الاشتراك", "ar"), ("توقف", "ar"),
    ("BAJA", "es"), ("Sair", "pt"), ("berhenti", "id"),
])
def test_stop_keywords_of_every_default_language(text, lang):
    match = KEYWORDS.match(text)
    assert match.kind == "stop" and match.language == lang


@pytest.mark.parametrize("text,lang", [("START", "en"), ("शुरू", "hi"), ("ابدأ", "ar"), ("alta", "es"),
                                       ("voltar", "pt"), ("MULAI", "id")])
def test_start_keywords_of_every_default_language(text, lang):
    match = KEYWORDS.match(text)
    assert match.kind == "start" and match.language == lang


@pytest.mark.parametrize("text", ["  stop!! ", "Ｓｔｏｐ", "st0p", "S\u200bTOP", "🛑 stop 🛑", "opt-out", "الغاء  الاشتراك"])
def test_keywords_match_through_case_width_punctuation_and_evasions(text):
    assert KEYWORDS.match(text).kind == "stop"


def test_a_configured_cyrillic_keyword_matches_in_capitals():
    keywords = OptOutKeywords.build(["en", "ru"], {"ru": LanguageKeywords(stop=["стоп"], start=["старт"],
                                                                          stop_reply="x", start_reply="y")})
    assert [(m.kind, m.language) for m in map(keywords.match, ("СТОП", "Стоп", "старт", "СТАРТ"))] == \
        [("stop", "ru"), ("stop", "ru"), ("start", "ru"), ("start", "ru")]


@pytest.mark.parametrize("text", ["please don't stop the deals", "stopping by later", "", "start the engine now",
                                  "stop " * 100])
def test_other_texts_are_not_keywords(text):
    assert KEYWORDS.match(text) is None


def test_the_reply_is_in_the_language_of_the_keyword():
    assert KEYWORDS.match("baja").reply.startswith("Te has dado de baja")
    assert KEYWORDS.match("stop").reply.startswith("You are unsubscribed")


def test_configured_keywords_replace_a_languages_defaults():
    custom = {"es": LanguageKeywords(stop=["fuera"], start=["vuelvo"], stop_reply="Adiós.", start_reply="Hola.")}
    keywords = OptOutKeywords.build(["es"], custom)
    assert keywords.match("FUERA").reply == "Adiós." and keywords.match("baja") is None
    assert keywords.match("stop") is None  # English is not enabled


def test_a_language_without_keywords_is_refused():
    with pytest.raises(ValueError, match="'xx' has no default keywords"):
        OptOutKeywords.build(["en", "xx"])


def test_a_keyword_meaning_stop_and_start_is_refused():
    custom = {"xx": LanguageKeywords(stop=["start"], start=["go"], stop_reply="a", start_reply="b")}
    with pytest.raises(ValueError, match="is a start keyword"):
        OptOutKeywords.build(["en", "xx"], custom)


def test_policy_section_refuses_bad_opt_out_settings_with_the_path():
    with pytest.raises(msgspec.ValidationError, match=r"\$\.opt_out"):
        msgspec.convert({"opt_out": {"languages": ["zz"]}}, PolicyConfig, strict=True)
