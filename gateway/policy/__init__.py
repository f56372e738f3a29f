"""Outbound policy: Unicode folding of text and terms (`normalize`), the immutable multi-term
scanner that finds and masks matches on the original text (`scanner`), word lists and verdicts
(`engine`), opt-out keywords (`optout`), the `[policy]` config section (`settings`).

The pure cores (`normalize`, `scanner`, `engine`: what a text's verdict is; `optout`: STOP / START
keywords) never do I/O (beyond loading packaged data) or keep per-message state; `service` is the
thin trio shell that loads lists, builds them off the event loop, swaps them and writes through
the writer.
"""
