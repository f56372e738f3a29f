"""Admin routes of the outbound policy: sensitive-word lists per workspace, opt-outs, and the logs of
policy actions and administrative changes.

A route acts on the caller's workspace; an admin may name another with `?workspace=NAME`. Every
change goes through the policy service (writer, audit, atomic swap) and is in force when answered.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote

from gateway.api.errors import ApiError, from_decode_error
from gateway.config import E164_PATTERN, NAME_PATTERN
from gateway.decoding import DECODE_ERRORS
from gateway.http.server import Request, Response
from gateway.store import policy_ops as P
from gateway.store.ops import rfc3339

_CATEGORY = re.compile(NAME_PATTERN)
_NAME = _CATEGORY
_E164 = re.compile(E164_PATTERN)
LOG_LIMIT = 1000


def query(request: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.query or "", keep_blank_values=True).items()}


def target_workspace(gw, request: Request, principal) -> str:
    """The caller's workspace, or for an admin the one named by ?workspace=."""
    wanted = query(request).get("workspace")
    if wanted is None or wanted == principal.workspace:
        return principal.workspace
    if principal.role != "admin":
        raise ApiError(403, "forbidden_workspace", "only an admin may act on another workspace",
                       {"workspace": wanted})
    if not _NAME.match(wanted) or gw.config.workspace(wanted) is None:
        raise ApiError(404, "workspace_not_found", f"no workspace {wanted!r} in the config", {"workspace": wanted})
    return wanted


def _category(params) -> str:
    category = unquote(params[0])
    if not _CATEGORY.match(category):
        raise ApiError(422, "invalid_field", "category: 1-63 characters of a-z 0-9 _ -, starting with a letter or digit",
                       {"path": "category"})
    return category


def limit_param(request: Request, default: int = 100) -> int:
    raw = query(request).get("limit")
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses, and a number past
    # 4,300 digits, which int() refuses too
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= LOG_LIMIT:
        raise ApiError(422, "invalid_field", f"limit: expected 1 to {LOG_LIMIT}", {"path": "limit"})
    return int(raw)


class PolicyApi:
    def __init__(self, gw) -> None:
        self.gw = gw

    # -- sensitive words ---------------------------------------------------------------------------

    async def list_words(self, request: Request, principal, params) -> Response:
        workspace = target_workspace(self.gw, request, principal)
        return Response.json(200, self.gw.policy.lists_view(workspace))

    async def get_words(self, request: Request, principal, params) -> Response:
        workspace = target_workspace(self.gw, request, principal)
        category = _category(params)
        for entry in self.gw.policy.lists_view(workspace, with_terms=category)["lists"]:
            if entry["category"] == category:
                return Response.json(200, {"workspace": workspace, **entry})
        raise ApiError(404, "word_list_not_found", f"no sensitive-word list {category!r} in {workspace!r}",
                       {"workspace": workspace, "category": category})

    async def put_words(self, request: Request, principal, params) -> Response:
        workspace = target_workspace(self.gw, request, principal)
        category = _category(params)
        try:
            words = await self.gw.policy.decode_list(request.body)
        except DECODE_ERRORS as exc:
            raise from_decode_error(exc) from None
        existed = await self.gw.policy.put_list(workspace, category, words, principal)
        view = next(e for e in self.gw.policy.lists_view(workspace)["lists"] if e["category"] == category)
        return Response.json(200 if existed else 201, {"workspace": workspace, **view})

    async def delete_words(self, request: Request, principal, params) -> Response:
        workspace = target_workspace(self.gw, request, principal)
        category = _category(params)
        if not self.gw.policy.has_api_list(workspace, category):
            raise ApiError(404, "word_list_not_found",
                           f"no list {category!r} set through the API in {workspace!r} (lists from files are "
                           "changed in their file; PUT an empty list to switch one off here)",
                           {"workspace": workspace, "category": category})
        await self.gw.policy.put_list(workspace, category, None, principal)
        return Response(204, b"")

    # -- opt-outs ----------------------------------------------------------------------------------

    def _pair(self, request: Request, principal, params) -> tuple[str, str, str]:
        workspace = target_workspace(self.gw, request, principal)
        sender, contact = unquote(params[0]), unquote(params[1])
        if self.gw.sender_workspace(sender) != workspace:
            raise ApiError(404, "sender_not_found", f"{sender} is not a sender of workspace {workspace!r}",
                           {"from": sender, "workspace": workspace})
        if not _E164.match(contact):
            raise ApiError(422, "invalid_field", "contact: expected an E.164 number such as +14155550100",
                           {"path": "contact"})
        return workspace, sender, contact

    async def get_opt_out(self, request: Request, principal, params) -> Response:
        workspace, sender, contact = self._pair(request, principal, params)
        view = self.gw.policy.opt_out_view(workspace, sender, contact)
        if view is None:
            view = {"workspace": workspace, "sender": sender, "contact": contact, "opted_out": False}
        return Response.json(200, view)

    async def put_opt_out(self, request: Request, principal, params) -> Response:
        workspace, sender, contact = self._pair(request, principal, params)
        await self.gw.policy.set_opt_out(workspace, sender, contact, True, source="admin", detail=principal.key_id,
                                         actor=principal.key_id, role=principal.role)
        return Response.json(200, self.gw.policy.opt_out_view(workspace, sender, contact))

    async def delete_opt_out(self, request: Request, principal, params) -> Response:
        workspace, sender, contact = self._pair(request, principal, params)
        await self.gw.policy.set_opt_out(workspace, sender, contact, False, source="admin", detail=principal.key_id,
                                         actor=principal.key_id, role=principal.role)
        return Response(204, b"")

    # -- logs ---------------------------------------------------------------------------------------

    async def policy_events(self, request: Request, principal, params) -> Response:
        """The newest policy actions of the workspace (block, review, mask, flag) with their terms."""
        workspace = target_workspace(self.gw, request, principal)
        limit = limit_param(request)  # refused before anything is read, whether or not there are events
        out = []
        for _, raw in _newest(self.gw.store, "policy_events"):
            rec = P.policy_event_decoder.decode(raw)
            if rec.workspace != workspace:
                continue
            out.append({"at": rfc3339(rec.at_ms), "action": rec.action, "message_id": rec.message_id,
                        "from": rec.sender, "to": rec.recipient,
                        "hits": [{"term": h.term, "category": h.category, "action": h.action,
                                  "start": h.start, "end": h.end} for h in rec.hits]})
            if len(out) >= limit:
                break
        return Response.json(200, {"workspace": workspace, "events": out})

    async def audit(self, request: Request, principal, params) -> Response:
        """The newest audited changes of the workspace (admins only)."""
        workspace = target_workspace(self.gw, request, principal)
        limit = limit_param(request)
        out = []
        for _, raw in _newest(self.gw.store, "audit"):
            rec = P.audit_decoder.decode(raw)
            if rec.workspace != workspace:
                continue
            out.append({"at": rfc3339(rec.at_ms), "actor": rec.actor, "role": rec.role, "action": rec.action,
                        "target": rec.target, "detail": rec.detail})
            if len(out) >= limit:
                break
        return Response.json(200, {"workspace": workspace, "entries": out})


def _newest(store, table: str, scan_limit: int = 100_000):
    """(key, value) of a table keyed by time-ordered ids, newest first (at most `scan_limit`)."""
    with store.env.begin(db=store.dbs[table], buffers=False) as txn:
        cur = txn.cursor()
        if not cur.last():
            return
        for n, item in enumerate(cur.iterprev()):
            if n >= scan_limit:
                return
            yield item
