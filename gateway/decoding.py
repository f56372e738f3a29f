"""What decoding bytes from outside with msgspec can raise: catch DECODE_ERRORS, never DecodeError alone.

msgspec raises DecodeError (ValidationError for a shape error) for malformed input, but not for all
of it: invalid UTF-8 inside a string raises UnicodeDecodeError, JSON or msgpack as well, and input
nested deeper than the interpreter's recursion limit where the type leaves the shape open
(msgspec.Raw, Any, object) raises RecursionError. Any of them escaping a handler answered 500, and
escaping the network link's frame decoder ended the gateway. Every place that decodes request bodies,
network frames, key bundles, message plaintexts and stored records catches this tuple.
"""
from __future__ import annotations

import msgspec

DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
