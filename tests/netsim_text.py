"""netsim for end-to-end tests whose `--record` lines also carry `text`: the body the recipient's
simulated device decrypted, so a test sees exactly what reached the recipient (netsim's own record
keeps only the payload type). Run as `python -m tests.netsim_text` with netsim's arguments."""
from __future__ import annotations

import sys

import msgspec
import orjson

from loadtest.netsim import server as S
from loadtest.netsim.__main__ import main

_decode = msgspec.msgpack.Decoder().decode
_record_submit = S.NetsimServer._record_submit


def _record_submit_with_text(self, sub, at_ms: int) -> None:
    before = len(self._record_lines)
    _record_submit(self, sub, at_ms)
    if len(self._record_lines) == before:
        return
    plaintext = self.network.last_plaintext
    try:
        body = _decode(plaintext if plaintext is not None else sub.payload)
    except (msgspec.DecodeError, ValueError):
        return
    if isinstance(body, dict) and isinstance(body.get("body"), str):
        line = orjson.loads(self._record_lines[-1])
        line["text"] = body["body"]
        self._record_lines[-1] = orjson.dumps(line).decode() + "\n"


S.NetsimServer._record_submit = _record_submit_with_text

if __name__ == "__main__":
    sys.exit(main())
