"""Sensitive-word policy engine: Unicode folding of text and terms (`normalize`) and the immutable
multi-term scanner that finds and masks matches on the original text (`scanner`).

This package owns matching only; it must never do I/O (beyond loading its packaged data), keep
per-message state, or decide what happens to a message that matches.
"""
