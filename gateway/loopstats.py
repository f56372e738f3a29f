"""Where the event loop's time goes: a trio Instrument that adds up the time of every task step by
kind of task, and the time the loop waits for I/O. /metrics exposes the totals, so an operator (or
a load test) sees which part of the gateway holds the single event loop: the HTTP server, the store's
writer (applying and answering committed batches), delivery, the network link.

It also counts the long ones: task steps, by label, and loop batches (from one wait for I/O to the
next: every runnable task's step, so the time an answer to I/O can wait) longer than each of
LONG_S, and the longest of each since start. A stall has a name: the part whose steps were long.

The clock is injected (`perf_counter` in the gateway). Cost: two clock reads and a dict update per
task step (~1 µs), and a comparison; the gateway runs a few thousand steps per second at its peak.
"""
from __future__ import annotations

from time import perf_counter
from typing import Callable

import trio

# Task names are the function's module and qualified name; the label is the gateway's package the
# task belongs to. The embedded netsim (when `[network] mode = "embedded"`) and trio's own tasks
# (its listeners serve only the embedded netsim here; connects are the link's and webhooks') get
# one label each.
_PREFIXES = (("loadtest.netsim.", "netsim"), ("trio._highlevel_serve_listeners.", "netsim"),
             ("trio.serve_listeners", "netsim"), ("trio.", "trio"), ("<", "trio"))
LONG_S = (0.002, 0.005, 0.010, 0.050)  # a step or batch over each of these is counted (seconds)


def task_label(name: str) -> str:
    """A task's label: `http`, `store` (the writer), `delivery`, `network` (the link), `webhooks`,
    `policy`, `inbound`, `app`, ... from its module under `gateway.`; `netsim` or `trio` for those;
    else the first part of its name. A bounded set: task names come from the code, not from input."""
    if name.startswith("gateway."):
        return name.split(".", 2)[1]
    for prefix, label in _PREFIXES:
        if name.startswith(prefix):
            return label
    return name.split(".", 1)[0]


class LoopStats(trio.abc.Instrument):
    """Seconds of task steps by label (`busy`), their number (`steps`), seconds spent waiting
    for I/O (`idle`); steps (by label) and batches over each of LONG_S (`long_steps`,
    `long_batches`: counts in LONG_S order) and the longest ones (`longest_step`, `longest_batch`)."""

    def __init__(self, clock: Callable[[], float] = perf_counter) -> None:
        self.clock = clock
        self.busy: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.idle = 0.0
        self.long_steps: dict[str, list[int]] = {}
        self.longest_step: dict[str, float] = {}
        self.long_batches = [0] * len(LONG_S)
        self.longest_batch = 0.0
        self._labels: dict[str, str] = {}
        self._started: float | None = None  # None until the first step that began after add_instrument
        self._waiting = 0.0
        self._batch_started: float | None = None  # None until the first wait for I/O has ended

    def before_task_step(self, task) -> None:
        self._started = self.clock()

    def after_task_step(self, task) -> None:
        if self._started is None:  # the step that added this instrument: its start was not seen
            return
        took = self.clock() - self._started
        name = task.name
        label = self._labels.get(name)
        if label is None:
            label = self._labels[name] = task_label(name)
        self.busy[label] = self.busy.get(label, 0.0) + took
        self.steps[label] = self.steps.get(label, 0) + 1
        if took > LONG_S[0]:
            counts = self.long_steps.get(label)
            if counts is None:
                counts = self.long_steps[label] = [0] * len(LONG_S)
            _count_over(counts, took)
            if took > self.longest_step.get(label, 0.0):
                self.longest_step[label] = took

    def before_io_wait(self, timeout: float) -> None:
        now = self._waiting = self.clock()
        if self._batch_started is not None:
            took = now - self._batch_started
            if took > LONG_S[0]:
                _count_over(self.long_batches, took)
                if took > self.longest_batch:
                    self.longest_batch = took

    def after_io_wait(self, timeout: float) -> None:
        now = self._batch_started = self.clock()
        self.idle += now - self._waiting


def _count_over(counts: list[int], took: float) -> None:
    for i, limit in enumerate(LONG_S):
        if took <= limit:
            return
        counts[i] += 1
