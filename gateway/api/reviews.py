"""Messages held for review by a sensitive-word list with action "review": list them, approve one
(it moves to pending and is scheduled like any accepted message) or reject it (it fails with the
reason and the status webhook says so). Supervisors and admins; held messages survive restarts
because they live in the `reviews` table.
"""
from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

import msgspec
from msgspec import Meta, Struct

from gateway.api.errors import ApiError, from_decode_error
from gateway.api.policy import limit_param, query, target_workspace
from gateway.crypto.seal import SealError
from gateway.decoding import DECODE_ERRORS
from gateway.http.server import Request, Response
from gateway.ids import is_id
from gateway.schedule.scheduler import QueuedMessage
from gateway.store import policy_ops as P
from gateway.store import records as R
from gateway.store.ops import rfc3339

_text_decoder = msgspec.msgpack.Decoder(R.TextPayload)
LIST_LIMIT = 1000  # held messages a page, at most (and by default)


class Decision(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+\Z")] | None = None


class ReviewsApi:
    def __init__(self, gw) -> None:
        self.gw = gw

    def _text(self, msg_id: str, review: P.ReviewRecord) -> str | None:
        try:
            return _text_decoder.decode(self.gw.sealer.open(review.payload, msg_id.encode())).body
        except (SealError, *DECODE_ERRORS):
            return None  # its data key is missing: listed without text

    def _view(self, msg_id: str, review: P.ReviewRecord) -> dict:
        text = self._text(msg_id, review)
        view = {
            "id": msg_id, "workspace": review.workspace, "from": review.sender, "to": review.recipient,
            "priority": R.PRIORITY_NAMES[review.priority], "held_at": rfc3339(review.held_ms), "text": text,
            "hits": [{"term": h.term, "category": h.category, "action": h.action, "start": h.start, "end": h.end}
                     for h in review.hits],
        }
        if review.client_ref is not None:
            view["client_ref"] = review.client_ref
        return view

    async def list(self, request: Request, principal, params) -> Response:
        """The workspace's held messages, oldest first, `?limit=` (default and most 1,000) a page; a
        full page ends with `next`, the id to go on after (`?after=`)."""
        workspace = target_workspace(self.gw, request, principal)
        limit = limit_param(request, LIST_LIMIT)
        after = query(request).get("after")
        if after is not None and not is_id(after):
            raise ApiError(422, "invalid_field", "after: the `next` of the page before (a message id)",
                           {"path": "after"})
        out: list[dict] = []
        next_page = None
        store = self.gw.store
        with store.env.begin(db=store.dbs["reviews"], buffers=False) as txn:
            cur = txn.cursor()
            found = cur.set_range(after.encode() + b"\0") if after is not None else cur.first()
            while found:
                key, raw = cur.item()
                review = P.review_decoder.decode(raw)
                if review.workspace == workspace:
                    if len(out) >= limit:
                        next_page = out[-1]["id"]
                        break
                    out.append(self._view(key.decode(), review))
                found = cur.next()
        return Response.json(200, {"workspace": workspace, "reviews": out, "next": next_page})

    def _held(self, principal, msg_id: str) -> P.ReviewRecord:
        raw = self.gw.store.get("reviews", msg_id.encode()) if is_id(msg_id) else None
        review = P.review_decoder.decode(raw) if raw is not None else None
        if review is None or (review.workspace != principal.workspace and principal.role != "admin"):
            raise ApiError(404, "review_not_found", f"no message {msg_id} held for review", {"id": msg_id})
        return review

    async def approve(self, request: Request, principal, params) -> Response:
        msg_id = unquote(params[0])
        held = self._held(principal, msg_id)
        opt_out = self.gw.config.policy.opt_out
        if (self.gw.policy.opted_out(held.workspace, held.sender, held.recipient)
                and not (held.priority == R.URGENT and opt_out.urgent_allowed)):
            # the contact said STOP while the message waited: approving must not send it anyway
            raise ApiError(422, "recipient_opted_out",
                           f"{held.recipient} opted out of messages from {held.sender} while this message "
                           "was held; reject it instead", {"id": msg_id, "to": held.recipient, "from": held.sender})
        now = self.gw.clock_ms()
        audit = self.gw.policy.audit_entry(principal, held.workspace, "review.approve", msg_id, {}, now)
        review = await self.gw.policy.write(P.approve_review, (msg_id, now, audit))
        if review is None:
            raise ApiError(404, "review_not_found", f"no message {msg_id} held for review", {"id": msg_id})
        self.gw.enqueue([QueuedMessage(msg_id, review.sender, review.recipient, review.priority)])
        return Response.json(200, {"id": msg_id, "status": "accepted"})

    async def reject(self, request: Request, principal, params) -> Response:
        msg_id = unquote(params[0])
        try:
            decision = msgspec.json.decode(request.body or b"{}", type=Decision)
        except DECODE_ERRORS as exc:
            raise from_decode_error(exc) from None
        held = self._held(principal, msg_id)
        now = self.gw.clock_ms()
        reason = decision.reason or "rejected_in_review"
        audit = self.gw.policy.audit_entry(principal, held.workspace, "review.reject", msg_id,
                                           {"reason": reason}, now)
        arg = P.RejectArg(msg_id, now, reason, self.gw.webhook_targets(), self.gw.event_ids, audit)
        result = await self.gw.policy.write(P.reject_review, arg)
        if result is None:
            raise ApiError(404, "review_not_found", f"no message {msg_id} held for review", {"id": msg_id})
        _, changes = result
        for ch in changes:
            self.gw.metrics.status.inc((ch.status,))
        if changes:
            self.gw.webhooks_wake({held.workspace})
        return Response.json(200, {"id": msg_id, "status": "failed", "reason": reason})
