"""API keys in the store: a minted key's record and a revocation, each written with its audit entry
in the same transaction, and the view that the admin API and the CLI show of a key.

The ops have the writer's shape, `op(txn, dbs, arg)`, so that the gateway runs them through its
writer and the offline CLI in a transaction of its own. A revoked key's record stays (marked with
when it was revoked): the listing and the audit log still name it, and its id is never reused.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from gateway.ids import IdGenerator
from gateway.store import policy_ops as P
from gateway.store import records as R
from gateway.store.ops import encode, rfc3339

# outcomes of revoke_api_key
REVOKED = "revoked"
ALREADY_REVOKED = "already_revoked"  # nothing written
LAST_ADMIN = "last_admin"  # the only admin key in force: nothing written
UNKNOWN = "unknown"


def audit_entry(ids: IdGenerator, at_ms: int, actor: str, actor_role: str, action: str, key_id: str,
                record: R.ApiKeyRecord) -> P.Audit:
    """The audit entry of an action on one key, filed under the key's workspace."""
    rec = P.AuditRecord(at_ms, actor, actor_role, record.workspace, action, key_id,
                        {"role": record.role, "label": record.label})
    return ids.new().encode(), P.encode(rec)


def put_api_key(txn, dbs, arg: tuple[str, R.ApiKeyRecord, P.Audit | None]) -> None:
    """api_keys (+ audit)."""
    key_id, record, audit = arg
    txn.put(key_id.encode(), encode(record), db=dbs["api_keys"])
    if audit is not None:
        txn.put(audit[0], audit[1], db=dbs["audit"])


class RevokeArg(NamedTuple):
    key_id: str
    at_ms: int
    audit: Callable[[R.ApiKeyRecord], P.Audit]  # the entry for the key (filed under its workspace)
    keep_an_admin: bool = True  # refuse to revoke the last admin key in force (the API's lock-out guard)


def revoke_api_key(txn, dbs, arg: RevokeArg) -> tuple[str, R.ApiKeyRecord | None]:
    """api_keys + audit: mark one key revoked. Returns the outcome and the key's record as it now
    stands (None when UNKNOWN)."""
    db = dbs["api_keys"]
    key = arg.key_id.encode()
    raw = txn.get(key, db=db)
    if raw is None:
        return UNKNOWN, None
    record = R.api_key_decoder.decode(raw)
    if record.revoked_ms:
        return ALREADY_REVOKED, record
    if arg.keep_an_admin and record.role == "admin" and not _another_admin(txn, db, key):
        return LAST_ADMIN, record
    record.revoked_ms = arg.at_ms
    txn.put(key, encode(record), db=db)
    audit = arg.audit(record)
    txn.put(audit[0], audit[1], db=dbs["audit"])
    return REVOKED, record


def _another_admin(txn, db, key: bytes) -> bool:
    for other, raw in txn.cursor(db=db):
        if other != key:
            record = R.api_key_decoder.decode(raw)
            if record.role == "admin" and not record.revoked_ms:
                return True
    return False


def all_keys(txn, db, workspace: str | None = None) -> list[tuple[str, R.ApiKeyRecord]]:
    """Every key (of one workspace), in key id order."""
    out = []
    for key, raw in txn.cursor(db=db):
        record = R.api_key_decoder.decode(raw)
        if workspace is None or record.workspace == workspace:
            out.append((bytes(key).decode(), record))
    return out


def view(key_id: str, record: R.ApiKeyRecord) -> dict:
    """What the admin API and the CLI show of a key: never its hash."""
    return {"id": key_id, "workspace": record.workspace, "role": record.role, "label": record.label,
            "created_at": rfc3339(record.created_ms),
            "revoked_at": rfc3339(record.revoked_ms) if record.revoked_ms else None}
