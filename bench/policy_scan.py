"""Micro-benchmark of the sensitive-word scanner: messages/s scanning 200-byte messages against 1,000
terms (normalization included), next to raw pyahocorasick on the lowercased message without any
normalization, and the build time of a 100,000-term scanner.

It measures in-process CPU cost on generated data only; it must never touch the network or the
store, and it reports targets rather than failing on them.
"""
from __future__ import annotations

import gc
import random
import sys
import time

import ahocorasick

from gateway.policy.scanner import Scanner, Term
from bench.common import micro_main

SCAN_TARGET = 100_000  # messages/s, one core
MESSAGE_BYTES = 200
TERMS = 1_000
BIG_TERMS = 100_000
MESSAGES = 20_000
REPEATS = 3

_WORDS = (
    "your order has shipped and will arrive tomorrow between nine and noon please confirm the delivery "
    "address reply stop to opt out thanks for shopping with us the invoice is attached as requested "
    "meeting moved to three pm see you at the office classic pass assess carefree"
).split()
_OTHER = [
    "Ваш заказ отправлен и прибудет завтра",
    "आपका ऑर्डर भेज दिया गया है और कल पहुंचेगा",
    "تم شحن طلبك وسيصل غدا",
    "您的订单已发货，明天送达",
    "Su pedido fue enviado y llegará mañana",
]


def _term(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) for _ in range(rng.randint(4, 10)))


def terms(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = {_term(rng) for _ in range(n * 2)}
    return sorted(out)[:n]


def messages(n: int, non_ascii_share: float, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < non_ascii_share:
            text = rng.choice(_OTHER)
            while len((text + " " + rng.choice(_OTHER)).encode()) <= MESSAGE_BYTES:
                text += " " + rng.choice(_OTHER)
        else:
            text = ""
            while len(text) < MESSAGE_BYTES:
                text += rng.choice(_WORDS) + rng.choice("  ,.")
            text = text[:MESSAGE_BYTES].capitalize()
        out.append(text)
    return out


def _rate(fn, items: list[str]) -> float:
    best = 0.0
    for _ in range(REPEATS):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for m in items:
                fn(m)
            best = max(best, len(items) / (time.perf_counter() - t0))
        finally:
            gc.enable()
    return best


def run() -> dict:
    words = terms(TERMS) + ["ass", "free", "win"]
    scanner = Scanner.build({"bench": [Term(w) for w in words]})
    raw = ahocorasick.Automaton()
    for w in words:
        raw.add_word(w, w)
    raw.make_automaton()

    def raw_scan(m: str) -> list:
        return list(raw.iter(m.lower()))

    ascii_msgs = messages(MESSAGES, 0.0)
    mixed_msgs = messages(MESSAGES, 0.2)
    t0 = time.perf_counter()
    big = Scanner.build({"bench": [Term(w) for w in terms(BIG_TERMS, seed=3)]})
    build_s = time.perf_counter() - t0
    result = {
        "terms": len(scanner),
        "message_bytes": MESSAGE_BYTES,
        "scan_ascii_msgs_per_s": _rate(scanner.scan, ascii_msgs),
        "scan_mixed_20pct_non_ascii_msgs_per_s": _rate(scanner.scan, mixed_msgs),
        "raw_pyahocorasick_msgs_per_s": _rate(raw_scan, ascii_msgs),
        "hit_share_ascii": sum(1 for m in ascii_msgs if scanner.scan(m)) / len(ascii_msgs),
        "build_100k_terms_s": build_s,
        "build_100k_terms": len(big),
        "target_msgs_per_s": SCAN_TARGET,
    }
    result["meets_target"] = result["scan_ascii_msgs_per_s"] >= SCAN_TARGET
    return result


def print_table(r: dict) -> None:
    print(f"policy scan   {r['scan_ascii_msgs_per_s']:>10,.0f} msg/s  ({r['terms']} terms, {r['message_bytes']}-byte"
          f" ASCII messages, normalization included; target {r['target_msgs_per_s']:,})")
    print(f"policy mixed  {r['scan_mixed_20pct_non_ascii_msgs_per_s']:>10,.0f} msg/s"
          "  (20% Cyrillic/Devanagari/Arabic/CJK/Spanish)")
    print(f"raw pyahocorasick {r['raw_pyahocorasick_msgs_per_s']:>10,.0f} msg/s  (lowercase only, no normalization)")
    print(f"build {r['build_100k_terms']:,} terms  {r['build_100k_terms_s']:.2f} s")


if __name__ == "__main__":
    sys.exit(micro_main(run, print_table))
