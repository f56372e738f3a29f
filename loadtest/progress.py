"""The live progress line (rate, latency, funnel) and the summary table printed at the end.

Formatting is pure (`progress_line`, `summary_table`); `Progress` only decides where the text goes:
a carriage-return line on a terminal, a plain line every few seconds otherwise.
"""

from __future__ import annotations

import sys
from typing import TextIO


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def progress_line(*, elapsed_s: float, offered_rps: float, done_rps: float, p99_ms: float | None,
                  in_flight: int, errors: int, funnel: dict | None) -> str:
    line = (f"t={elapsed_s:6.1f}s  offered {offered_rps:8.0f}/s  answered {done_rps:8.0f}/s  "
            f"p99 {_ms(p99_ms):>7} ms  in flight {in_flight:5d}  errors {errors}")
    if funnel:
        line += ("  | accepted {accepted:.0f} sent {sent:.0f} delivered {delivered:.0f} read {read:.0f} "
                 "failed {failed:.0f}").format(**{k: funnel.get(k, 0) for k in
                                                  ("accepted", "sent", "delivered", "read", "failed")})
    return line


class Progress:
    def __init__(self, out: TextIO = sys.stdout, every_s_plain: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every = every_s_plain
        self._last_plain = -1e9
        self._shown = False

    def show(self, line: str, elapsed_s: float) -> None:
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")  # rewrite the line in place, clearing what is left of it
            self.out.flush()
            self._shown = True
        elif elapsed_s - self._last_plain >= self.every:
            self._last_plain = elapsed_s
            self.out.write(line + "\n")
            self.out.flush()

    def say(self, text: str) -> None:
        if self.tty and self._shown:
            self.out.write("\n")
            self._shown = False
        self.out.write(text + "\n")
        self.out.flush()


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows) if rows else 0
    lines = ["-" * (width + 40)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("-" * (width + 40))
    return "\n".join(lines)
