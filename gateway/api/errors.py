"""ApiError: the one way a handler refuses a request, with a stable snake_case code."""
from __future__ import annotations

import re

import msgspec

_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.retry_after = retry_after


def from_decode_error(exc: Exception, prefix: str = "$") -> ApiError:
    """400 for bytes that are not JSON (one of gateway.decoding.DECODE_ERRORS: invalid UTF-8 and
    nesting past the recursion limit included), 422 with the exact field path for a shape error."""
    if isinstance(exc, UnicodeDecodeError):
        text = f"a string holds bytes that are not UTF-8 ({exc.reason})"
    elif isinstance(exc, RecursionError):
        text = "arrays or objects nested too deeply"
    else:
        text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return ApiError(400, "invalid_json", "the body is not valid JSON", {"reason": text})
    m = _PATH.match(text)
    assert m is not None
    path = (m.group("path") or "$").replace("$", prefix, 1)
    message = m.group("msg").replace("`", "")
    return ApiError(422, "invalid_field", f"{path}: {message}", {"path": path, "reason": message})
