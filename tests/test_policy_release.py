"""Replaced rule sets are freed by the releaser in a worker thread, an automaton at a time, never on
the event loop's thread, and only once the engine no longer holds them."""
import threading
import weakref

import trio

from gateway.policy import scanner as scanner_module
from gateway.policy.engine import Engine, Rules, WordList
from gateway.policy.release import RulesReleaser
from gateway.policy.scanner import Scanner


def big_rules(terms: int = 40) -> Rules:
    return Rules.build({"spam": WordList("block", [f"word{i:03d}x" for i in range(terms)])})


class Freeing:
    """Records the thread each watched scanner is freed in, and each `release` call's thread and pauses."""

    def __init__(self, monkeypatch) -> None:
        self.freed_in: list[int] = []
        self.released: list[tuple[int, int]] = []  # (thread, pauses)
        original = Scanner.release

        def release(scanner, pause):
            pauses = []
            original(scanner, lambda: (pauses.append(1), pause()))
            self.released.append((threading.get_ident(), len(pauses)))
        monkeypatch.setattr(Scanner, "release", release)

    def watch(self, scanner: Scanner) -> weakref.ref:
        return weakref.ref(scanner, lambda _: self.freed_in.append(threading.get_ident()))


async def test_retired_rules_are_freed_in_a_worker_thread_an_automaton_at_a_time(monkeypatch):
    monkeypatch.setattr(scanner_module, "SHARD_KEYS", 8)
    freeing = Freeing(monkeypatch)
    engine, releaser = Engine(), RulesReleaser()
    engine.swap(big_rules(), {})
    old = freeing.watch(engine.rules("default").scanner)
    loop_thread = threading.get_ident()
    async with trio.open_nursery() as nursery:
        await nursery.start(releaser.run, lambda: None)
        releaser.release(engine.swap(big_rules(3), {}))
        assert old() is not None  # handed over, not dropped by the swap
        await releaser.drained()
        nursery.cancel_scope.cancel()
    assert old() is None
    assert freeing.freed_in and freeing.freed_in[0] != loop_thread
    [(thread, pauses)] = freeing.released
    assert thread == freeing.freed_in[0] and pauses == 5  # 40 keys in automata of 8


async def test_rules_released_while_the_releaser_is_busy_are_freed_too(monkeypatch):
    freeing = Freeing(monkeypatch)
    releaser = RulesReleaser()
    sets = [big_rules() for _ in range(3)]
    refs = [freeing.watch(r.scanner) for r in sets]
    async with trio.open_nursery() as nursery:
        await nursery.start(releaser.run, lambda: None)
        releaser.release([sets.pop()])
        await trio.sleep(0)
        releaser.release([sets.pop(), sets.pop()])
        await releaser.drained()
        nursery.cancel_scope.cancel()
    assert [r() for r in refs] == [None, None, None] and len(freeing.released) == 3


async def test_drained_returns_at_once_with_nothing_to_free():
    with trio.fail_after(1):
        await RulesReleaser().drained()
