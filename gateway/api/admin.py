"""Admin routes: API keys, runtime sender tiers, config reload; and the unauthenticated probes
/healthz, /readyz and /metrics.

Admin actions change state only through the writer and the composition root's apply methods;
a new API key is shown once, in the response, and never stored or logged in clear.
"""
from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import unquote

import msgspec
from msgspec import Meta, Struct

from gateway.api.errors import ApiError, from_decode_error
from gateway.api.policy import query
from gateway.config import E164_PATTERN, NAME_PATTERN, Burst, ConfigError, Name, RatePerMinute
from gateway.crypto.fingerprint import format_safety_number, safety_number
from gateway.crypto.identity import IdentityKey, InvalidKey
from gateway.decoding import DECODE_ERRORS
from gateway.http.auth import KEY_ID, ROLES, mint_key
from gateway.http.server import Request, Response
from gateway.store import key_ops as K
from gateway.store import ops
from gateway.store import records as R
from gateway.store.writer import StorageError, StorageFull


_E164 = re.compile(E164_PATTERN)
_NAME = re.compile(NAME_PATTERN)


class NewKey(Struct, forbid_unknown_fields=True):
    workspace: Name
    role: str
    label: Annotated[str, Meta(max_length=200)] = ""


class SenderPatch(Struct, forbid_unknown_fields=True):
    tier: str | None = None
    rate_per_minute: RatePerMinute | None = None
    burst: Burst | None = None
    reset: bool = False


def _decode(body: bytes, typ):
    try:
        return msgspec.json.decode(body or b"{}", type=typ)
    except DECODE_ERRORS as exc:
        raise from_decode_error(exc) from None


class AdminApi:
    def __init__(self, gw) -> None:
        self.gw = gw

    async def create_key(self, request: Request, principal, params) -> Response:
        req = _decode(request.body, NewKey)
        if req.role not in ROLES:
            raise ApiError(422, "invalid_field", f"$.role: expected one of {', '.join(ROLES)}",
                           {"path": "$.role"})
        if self.gw.config.workspace(req.workspace) is None:  # its key could reach nothing anyone sees
            raise ApiError(404, "workspace_not_found", f"no workspace {req.workspace!r} in the config",
                           {"workspace": req.workspace})
        now = self.gw.clock_ms()
        key_id, key, record = mint_key(req.workspace, req.role, now, req.label)
        audit = K.audit_entry(self.gw.policy.ids, now, principal.key_id, principal.role, "api_key.create",
                              key_id, record)
        await self._write(K.put_api_key, (key_id, record, audit))
        self.gw.auth.remember(key_id, record)
        return Response.json(201, {**K.view(key_id, record), "key": key})

    async def list_keys(self, request: Request, principal, params) -> Response:
        """Every key (`?workspace=` one workspace's), revoked ones too: never a secret or a hash."""
        workspace = query(request).get("workspace")
        if workspace is not None and not _NAME.match(workspace):
            raise ApiError(422, "invalid_field", "workspace: expected a workspace name", {"path": "workspace"})
        store = self.gw.store
        with store.env.begin(buffers=False) as txn:
            keys = K.all_keys(txn, store.dbs["api_keys"], workspace)
        return Response.json(200, {"keys": [K.view(key_id, record) for key_id, record in keys]})

    async def revoke_key(self, request: Request, principal, params) -> Response:
        """Revoke a key: refused from the next request on, on every connection. The last admin key in
        force is not revoked here (409), so the API cannot lock every admin out."""
        key_id = unquote(params[0])
        if not KEY_ID.match(key_id):
            raise ApiError(404, "api_key_not_found", "no such API key: an id is 16 hex digits", {"id": key_id[:40]})
        now = self.gw.clock_ms()
        ids = self.gw.policy.ids
        arg = K.RevokeArg(key_id, now, lambda rec: K.audit_entry(ids, now, principal.key_id, principal.role,
                                                                 "api_key.revoke", key_id, rec))
        outcome, record = await self._write(K.revoke_api_key, arg)
        if outcome == K.UNKNOWN:
            raise ApiError(404, "api_key_not_found", f"no API key {key_id[:40]!r}", {"id": key_id[:40]})
        if outcome == K.LAST_ADMIN:
            raise ApiError(409, "last_admin_key", "this is the last admin key in force; create another "
                           "admin key first (or use `gateway keys revoke` on the host)", {"id": key_id})
        self.gw.auth.remember(key_id, record)
        return Response.json(200, K.view(key_id, record))

    async def _write(self, op, arg):
        try:
            return await self.gw.writer.write(op, arg)
        except (StorageFull, StorageError):
            raise ApiError(503, "storage_full", "the store refused the change; nothing was changed",
                           retry_after=self.gw.config.store.storage_full_retry_after_s) from None

    async def list_senders(self, request: Request, principal, params) -> Response:
        return Response.json(200, {"senders": [self.gw.sender_view(s.number) for s in self.gw.config.senders]})

    async def patch_sender(self, request: Request, principal, params) -> Response:
        number = unquote(params[0])
        if self.gw.sender_workspace(number) is None:
            raise ApiError(404, "sender_not_found", f"no sender {number} in the config")
        patch = _decode(request.body, SenderPatch)
        override = None
        if patch.reset and (patch.tier, patch.rate_per_minute, patch.burst) != (None, None, None):
            raise ApiError(422, "invalid_field", "reset: give reset alone, or tier, rate_per_minute and/or burst",
                           {"path": "$.reset"})
        if not patch.reset:
            override = self._override(number, patch)
        await self._write(ops.put_sender_override, (number, override))
        self.gw.apply_sender(number)
        return Response.json(200, self.gw.sender_view(number))

    def _override(self, number: str, patch: SenderPatch) -> R.SenderOverride:
        cfg = self.gw.config
        if patch.tier is None and patch.rate_per_minute is None and patch.burst is None:
            raise ApiError(422, "empty_patch", "give tier, rate_per_minute and/or burst, or reset")
        rate, burst = self.gw.sender_rate(number)
        if patch.tier is not None:
            tier = cfg.tiers.get(patch.tier)
            if tier is None:
                raise ApiError(422, "unknown_tier", f"no tier {patch.tier!r}",
                               {"tiers": sorted(cfg.tiers)})
            rate, burst = tier.rate_per_minute, tier.burst
        if patch.rate_per_minute is not None:
            rate = patch.rate_per_minute
            if patch.tier is None:
                burst = min(burst, rate)  # a lower rate alone must not keep a larger burst
        if patch.burst is not None:
            burst = patch.burst
        return R.SenderOverride(rate, burst, patch.tier, self.gw.clock_ms())

    async def safety_number(self, request: Request, principal, params) -> Response:
        """The 60-digit safety number of a sender and a recipient it has a session with (Signal's
        numeric fingerprint over both identity keys and numbers), for out-of-band verification."""
        number, recipient = unquote(params[0]), unquote(params[1])
        if not _E164.match(recipient):  # not a number: a mistake to name, not a session to look for
            raise ApiError(422, "invalid_field", "recipient: expected an E.164 number such as +14155550100",
                           {"path": "recipient"})
        owner = self.gw.sender_workspace(number)
        # Another workspace's sender answers exactly like an unknown one: a supervisor learns
        # neither its keys nor whom it has sessions with.
        if owner is None or (owner != principal.workspace and principal.role != "admin"):
            raise ApiError(404, "sender_not_found", f"no sender {number} in this workspace")
        identity = self.gw.keyring.identity(number)
        remote = self.gw.delivery.remote_identity(number, recipient)
        if identity is None or remote is None:
            raise ApiError(404, "session_not_found", f"no session between {number} and {recipient} yet",
                           {"sender": number, "recipient": recipient})
        try:
            remote_key = IdentityKey(remote)
        except (InvalidKey, ValueError):
            raise ApiError(404, "session_not_found", "the stored identity key of the recipient is unusable",
                           {"sender": number, "recipient": recipient}) from None
        digits = safety_number(number, identity.public, recipient, remote_key)
        return Response.json(200, {
            "sender": number, "recipient": recipient, "safety_number": digits,
            "formatted": format_safety_number(digits),
            "sender_identity_key": identity.public.encoded.hex(),
            "recipient_identity_key": remote_key.encoded.hex(),
        })

    async def reload(self, request: Request, principal, params) -> Response:
        try:
            changes = await self.gw.reload()
        except ConfigError as exc:
            raise ApiError(422, "config_invalid", "the new config was refused; the old one stays",
                           {"file": exc.source, "problems": exc.problems}) from None
        await self.gw.policy.settled()  # new word lists are built off the loop; answer once they apply
        return Response.json(200, {"status": "reloaded", "changes": changes,
                                   "restart_required": self.gw.restart_required()})


class ProbesApi:
    def __init__(self, gw) -> None:
        self.gw = gw

    def healthz(self, request: Request, principal, params) -> Response:
        """A plain function: the server's reading task answers it at once, so a liveness probe costs
        the loop one short step and its round trip is the loop's answer to I/O."""
        return Response.json(200, {"status": "ok"})

    async def readyz(self, request: Request, principal, params) -> Response:
        problems = self.gw.readiness_problems()
        if problems:
            return Response.json(503, {"status": "not_ready", "problems": problems})
        return Response.json(200, {"status": "ready"})

    async def metrics(self, request: Request, principal, params) -> Response:
        return Response(200, self.gw.metrics.registry.render(),
                        content_type="text/plain; version=0.0.4; charset=utf-8")
