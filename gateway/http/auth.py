"""API keys: minting, hashing and checking bearer tokens, and which role reaches which route.

A key is `gw_<key id>_<secret>`; only sha256(secret) is stored, looked up by key id and compared
in constant time. A connection may remember the header it was last verified with (`memo`), so a
keep-alive client that sends the same key again costs one constant-time comparison instead of a
hash. Keys never appear in logs or error messages.

A revoked key is refused (401 `revoked_api_key`, told only to a caller that holds its secret) from
the moment its revocation is stored through this process (`remember`), and within one `refresh`
(a task of the gateway's, every second) when another process, the CLI, stored it.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Callable

from gateway.store import records as R

ROLES = ("admin", "app", "agent", "supervisor")
_MEMO = "auth"  # key of the (verified header, principal) pair in a connection's memo
_TOKEN = re.compile(r"^gw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
KEY_ID = re.compile(r"[0-9a-f]{16}\Z")  # what a key's id looks like (the part a listing shows)


class Principal:
    __slots__ = ("key_id", "workspace", "role")

    def __init__(self, key_id: str, workspace: str, role: str) -> None:
        self.key_id, self.workspace, self.role = key_id, workspace, role


def mint_key(workspace: str, role: str, now_ms: int, label: str = "") -> tuple[str, str, R.ApiKeyRecord]:
    """Returns (key id, full key to hand out once, record to store)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = R.ApiKeyRecord(
        secret_hash=hashlib.sha256(secret.encode()).digest(),
        workspace=workspace,
        role=role,
        created_ms=now_ms,
        label=label,
    )
    return key_id, f"gw_{key_id}_{secret}", record


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Authenticator:
    """Checks `Authorization: Bearer` values; `load(key_id)` reads a record from the store."""

    def __init__(self, load: Callable[[str], R.ApiKeyRecord | None]) -> None:
        self._load = load
        self._cache: dict[str, Principal] = {}  # keys in force
        self._records: dict[str, R.ApiKeyRecord] = {}  # every key seen, revoked ones too

    def remember(self, key_id: str, record: R.ApiKeyRecord) -> None:
        """Take a key's record as it now stands (minted, revoked, or read from the store). A new
        principal object (or none) makes every connection's memo of the key stale: checked again."""
        before = self._records.get(key_id)
        self._records[key_id] = record
        if record.revoked_ms:
            self._cache.pop(key_id, None)
        elif (key_id not in self._cache or before is None
              or (before.secret_hash, before.workspace, before.role) != (record.secret_hash, record.workspace,
                                                                          record.role)):
            self._cache[key_id] = Principal(key_id, record.workspace, record.role)

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._records.pop(key_id, None)

    def known(self) -> list[str]:
        """Ids of the keys this process holds a record of (for `refresh`)."""
        return list(self._records)

    def refresh(self, records: dict[str, R.ApiKeyRecord | None]) -> int:
        """Take the stored records of known keys (None: gone from the store); returns how many
        changed. A record that did not change keeps its principal, so no connection re-hashes."""
        changed = 0
        for key_id, record in records.items():
            seen = self._records.get(key_id)
            if record is None:
                if seen is not None:
                    self.forget(key_id)
                    changed += 1
            elif record != seen:
                self.remember(key_id, record)
                changed += 1
        return changed

    def authenticate(self, header: str | None, memo: dict | None = None) -> Principal:
        """The principal of a valid `Authorization` header, else AuthError 401. `memo` is a per-connection
        dict: the header that was verified on this connection last is compared in constant time and,
        if it is the same, not hashed again (while its key is still known and in force)."""
        if memo is not None and header and header.isascii():
            seen = memo.get(_MEMO)
            if seen is not None and hmac.compare_digest(header, seen[0]):
                principal = seen[1]
                if self._cache.get(principal.key_id) is principal:
                    return principal
        principal = self._verify(header)
        if memo is not None and header.isascii():
            memo[_MEMO] = (header, principal)
        return principal

    def _verify(self, header: str | None) -> Principal:
        if not header:
            raise AuthError(401, "missing_api_key", "send an API key as 'Authorization: Bearer <key>'")
        scheme, _, token = header.partition(" ")
        match = _TOKEN.match(token.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise AuthError(401, "invalid_api_key", "the API key is malformed or unknown")
        key_id, secret = match.groups()
        record = self._records.get(key_id)
        if record is None:
            record = self._load(key_id)
            if record is None:
                raise AuthError(401, "invalid_api_key", "the API key is malformed or unknown")
            self.remember(key_id, record)
        digest = hashlib.sha256(secret.encode()).digest()
        if not hmac.compare_digest(digest, record.secret_hash):
            raise AuthError(401, "invalid_api_key", "the API key is malformed or unknown")
        principal = self._cache.get(key_id)
        if principal is None:  # its holder proved the secret: saying why costs nothing
            raise AuthError(401, "revoked_api_key", "this API key was revoked")
        return principal


def authorize(principal: Principal, allowed: frozenset[str]) -> None:
    if principal.role not in allowed:
        raise AuthError(
            403, "forbidden_role", f"role {principal.role!r} may not use this route"
        )
