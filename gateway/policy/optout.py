"""Opt-out keywords as a pure core: per-language STOP / START keyword lists (defaults for English,
Hindi, Arabic, Spanish, Portuguese and Indonesian, replaceable in the config) and the matcher that
tells whether an inbound text is one of them, with the confirmation to answer in that language.

A text matches when, folded like the sensitive-word engine folds (case, width, look-alike letters,
zero-width characters, diacritics; punctuation and emoji become spaces), it is exactly a keyword:
"STOP", "stop!", "Ｓｔｏｐ" match; "please don't stop the deals" does not. Pure: no I/O, no state.
"""
from __future__ import annotations

from typing import Annotated, NamedTuple

from msgspec import Meta, Struct

from gateway.policy.normalize import fold
from gateway.policy.normalize_py import leet_words

Keyword = Annotated[str, Meta(min_length=1, max_length=64)]


class LanguageKeywords(Struct, frozen=True, forbid_unknown_fields=True):
    stop: list[Keyword]
    start: list[Keyword]
    stop_reply: Annotated[str, Meta(min_length=1, max_length=640)]
    start_reply: Annotated[str, Meta(min_length=1, max_length=640)]


DEFAULT_KEYWORDS: dict[str, LanguageKeywords] = {
    "en": LanguageKeywords(
        stop=["stop", "stopall", "unsubscribe", "cancel", "end", "quit", "opt out", "optout"],
        start=["start", "unstop", "subscribe"],
        stop_reply="You are unsubscribed and will get no more marketing messages from this number. "
                   "Reply START to subscribe again.",
        start_reply="You are subscribed again. Reply STOP to unsubscribe."),
    "hi": LanguageKeywords(
        stop=["रोकें", "रोको", "बंद", "बंद करें", "बंद करो", "सदस्यता समाप्त"],
        start=["शुरू", "शुरू करें", "चालू करें"],
        stop_reply="आपकी सदस्यता समाप्त कर दी गई है; इस नंबर से अब कोई मार्केटिंग संदेश नहीं आएगा। "
                   "फिर से जुड़ने के लिए शुरू लिखें।",
        start_reply="आप फिर से जुड़ गए हैं। सदस्यता समाप्त करने के लिए रोकें लिखें।"),
    "ar": LanguageKeywords(
        stop=["توقف", "إيقاف", "الغاء", "إلغاء الاشتراك", "الغاء الاشتراك"],
        start=["ابدأ", "اشتراك", "تفعيل"],
        stop_reply="تم إلغاء اشتراكك ولن تصلك رسائل تسويقية من هذا الرقم. أرسل ابدأ للاشتراك مجددا.",
        start_reply="تم تفعيل اشتراكك من جديد. أرسل توقف لإلغاء الاشتراك."),
    "es": LanguageKeywords(
        stop=["baja", "parar", "alto", "detener", "cancelar", "desuscribir"],
        start=["alta", "comenzar", "reanudar"],
        stop_reply="Te has dado de baja y no recibirás más mensajes de marketing de este número. "
                   "Responde ALTA para volver a suscribirte.",
        start_reply="Te has suscrito de nuevo. Responde BAJA para darte de baja."),
    "pt": LanguageKeywords(
        stop=["sair", "parar", "cancelar", "descadastrar", "remover"],
        start=["voltar", "retomar", "inscrever"],
        stop_reply="Você cancelou a inscrição e não receberá mais mensagens de marketing deste número. "
                   "Responda VOLTAR para se inscrever de novo.",
        start_reply="Sua inscrição foi reativada. Responda SAIR para cancelar."),
    "id": LanguageKeywords(
        stop=["berhenti", "stop", "batal", "keluar"],
        start=["mulai", "langganan", "lanjut"],
        stop_reply="Anda telah berhenti berlangganan dan tidak akan menerima pesan pemasaran dari nomor "
                   "ini. Balas MULAI untuk berlangganan lagi.",
        start_reply="Anda berlangganan lagi. Balas BERHENTI untuk berhenti."),
}
DEFAULT_LANGUAGES = ("en", "hi", "ar", "es", "pt", "id")


class KeywordMatch(NamedTuple):
    kind: str  # "stop" | "start"
    language: str
    keyword: str  # as configured
    reply: str


def keyword_key(text: str) -> str:
    """The form keywords and texts are compared in (leetspeak read in words: "ST0P" is "stop")."""
    return " ".join(leet_words(fold(text)).split())


class OptOutKeywords:
    """Built once from the enabled languages; `match` is a dict lookup on the folded text."""

    __slots__ = ("_table", "languages")

    def __init__(self, table: dict[str, KeywordMatch], languages: tuple[str, ...]) -> None:
        self._table = table
        self.languages = languages

    @classmethod
    def build(cls, languages: list[str] | tuple[str, ...],
              keywords: dict[str, LanguageKeywords] | None = None) -> OptOutKeywords:
        """`keywords` replace the defaults of their language (or add one). The first language
        listed wins a keyword two languages share; ValueError names a keyword that would mean STOP
        in one enabled language and START in another, and a language without keywords."""
        known = {**DEFAULT_KEYWORDS, **(keywords or {})}
        table: dict[str, KeywordMatch] = {}
        for lang in languages:
            if lang not in known:
                raise ValueError(f"language {lang!r} has no default keywords: give [policy.opt_out.keywords.{lang}]")
            kw = known[lang]
            for kind, words, reply in (("stop", kw.stop, kw.stop_reply), ("start", kw.start, kw.start_reply)):
                for word in words:
                    key = keyword_key(word)
                    if not key:
                        raise ValueError(f"{lang}.{kind}: keyword {word!r} has no letter or digit")
                    earlier = table.get(key)
                    if earlier is not None and earlier.kind != kind:
                        raise ValueError(f"{lang}.{kind}: {word!r} is a {earlier.kind} keyword in {earlier.language!r}")
                    if earlier is None:
                        table[key] = KeywordMatch(kind, lang, word, reply)
        return cls(table, tuple(languages))

    def match(self, text: str) -> KeywordMatch | None:
        if len(text) > 200:  # a keyword message is short; do not fold long texts for nothing
            return None
        return self._table.get(keyword_key(text))
