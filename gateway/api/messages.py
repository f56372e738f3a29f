"""POST /v1/messages, POST /v1/messages/batch and GET /v1/messages/{id}.

Validation is done by msgspec Structs plus the checks that need the workspace's config; a 202
is answered only after the message is committed, and an Idempotency-Key makes a retry return
the first answer without sending anything twice.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import Annotated, Literal
from urllib.parse import unquote

import msgspec
import orjson
import trio
from msgspec import Meta, Struct

from gateway.api.errors import ApiError, from_decode_error
from gateway.config import E164
from gateway.crypto.seal import SealError
from gateway.decoding import DECODE_ERRORS
from gateway.http.server import Deferred, Request, Response
from gateway.ids import is_id
from gateway.policy.engine import Verdict
from gateway.policy.service import Blocked
from gateway.schedule.scheduler import QueuedMessage
from gateway.store import ops
from gateway.store import policy_ops as P
from gateway.store import records as R
from gateway.store.ops import rfc3339
from gateway.store.writer import StorageError, StorageFull

log = logging.getLogger("gateway.api")



class TextContent(Struct, forbid_unknown_fields=True):
    body: Annotated[str, Meta(min_length=1)]


class SendRequest(Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    to: E164
    text: TextContent
    type: Literal["text"] = "text"
    sender: str | None = None
    priority: Literal["urgent", "normal", "bulk"] = "normal"
    client_ref: Annotated[str, Meta(max_length=256)] | None = None


class BatchRequest(Struct, forbid_unknown_fields=True):
    messages: Annotated[list[msgspec.Raw], Meta(min_length=1)]


_send_decoder = msgspec.json.Decoder(SendRequest)
_enc = R.ENCODER.encode
_batch_decoder = msgspec.json.Decoder(BatchRequest)
_IDEM_MAX = 255
_BATCH_SLICE = 64  # batch items prepared between two checkpoints


class Prepared:
    """A validated message, ready to be written: to send now (`item`, `queued`), or held for review
    (`held`); `verdict` and the policy records when the sensitive-word lists hit."""

    __slots__ = ("item", "queued", "held", "verdict", "record", "flag", "view")

    def __init__(self, item: ops.AcceptItem | None, queued: QueuedMessage | None, held: P.HeldItem | None = None,
                 verdict: Verdict | None = None, record: tuple[bytes, bytes] | None = None,
                 flag: tuple[list[bytes], dict] | None = None, view: dict | None = None) -> None:
        self.item, self.queued, self.held = item, queued, held
        self.verdict, self.record, self.flag, self.view = verdict, record, flag, view

    @property
    def id(self) -> str:
        return self.item.id if self.item is not None else self.held.id

    def answer(self) -> dict:
        """The 202 answer (or batch result) for this message."""
        out = {"id": self.id, "status": "held" if self.held is not None else "accepted"}
        if self.view is not None:
            out["policy"] = self.view
        return out


class _PlainAccepts:
    """The plain POST /v1/messages (no list hit, no Idempotency-Key) that go into one group commit:
    one store op and one callback for all of them. The callback answers each request (202, or the
    store's refusal) and hands the accepted ones to the scheduler; no task waits for the commit."""

    __slots__ = ("gw", "group", "answers", "queued", "batch")

    def __init__(self, gw) -> None:
        self.gw = gw
        self.batch = None  # the writer's batch holding the group (Writer.joined counts its callers)
        self.group = ops.AcceptGroup()
        self.answers: list[tuple[Deferred, bytes]] = []
        self.queued: list[QueuedMessage] = []

    def add(self, prepared: Prepared) -> Deferred:
        item = prepared.item
        answer = Deferred()
        self.group.items.append(item)
        self.answers.append((answer, b'{"id":"%s","status":"accepted"}' % item.id.encode()))
        self.queued.append(prepared.queued)
        return answer

    def committed(self, result, error: BaseException | None) -> None:
        self.batch = None  # the batch holds this callback: no cycle left for the collector
        self.group.sealed = True  # (already, unless the batch failed before the op ran)
        if error is not None:
            refusal = _store_refusal(self.gw, error, len(self.answers))
            for answer, _ in self.answers:
                answer.resolve(refusal)
            return
        try:
            for answer, body in self.answers:  # the 202s first: the scheduler's bookkeeping can follow
                answer.resolve(Response(202, body))
        finally:  # committed messages are scheduled whatever became of their answers
            self.gw.enqueue(self.queued)


def _store_refusal(gw, error: BaseException, requests: int = 1) -> Response:
    """The answer when the commit of an accept failed: nothing was accepted."""
    if isinstance(error, StorageFull):
        gw.metrics.storage_full.inc(n=requests)
        return Response.error(503, "storage_full", "the message store is full; nothing was accepted",
                              retry_after=gw.config.store.storage_full_retry_after_s)
    if isinstance(error, StorageError):
        return Response.error(503, "storage_unavailable", "the message store failed; nothing was accepted",
                              retry_after=5)
    log.error("accept failed in the store: %r", error)
    return Response.error(500, "internal_error", "internal server error")


class MessagesApi:
    def __init__(self, gw) -> None:
        self.gw = gw
        self._plain: _PlainAccepts | None = None  # the group the next plain accept joins

    # -- core (no I/O) --------------------------------------------------------------------

    def prepare(self, req: SendRequest, workspace: str, now_ms: int) -> Prepared:
        cfg = self.gw.config
        sender = req.sender
        if sender is None:
            ws = cfg.workspace(workspace)
            sender = ws.default_sender if ws is not None else None
            if sender is None:
                raise ApiError(422, "sender_required",
                               "'from' is required: this workspace has no default sender", {"path": "$.from"})
        owner = self.gw.sender_workspace(sender)
        if owner != workspace:
            raise ApiError(422, "unknown_sender", f"{sender} is not a sender of this workspace",
                           {"path": "$.from", "from": sender})
        if self.gw.sender_workspace(req.to) is not None:  # the network would hand it back to us
            raise ApiError(422, "invalid_field", f"$.to: {req.to} is a sender number of this gateway",
                           {"path": "$.to"})
        if len(req.text.body) > cfg.server.max_body_chars:
            raise ApiError(422, "body_too_long",
                           f"text.body has {len(req.text.body)} characters; the limit is "
                           f"{cfg.server.max_body_chars}",
                           {"path": "$.text.body", "limit": cfg.server.max_body_chars})
        priority = R.PRIORITY_BY_NAME[req.priority]
        body = req.text.body
        verdict = None
        policy = self.gw.policy
        if policy.screening(workspace):  # raises for an opted-out contact and for blocked terms
            verdict = policy.screen(workspace, sender, req.to, priority, body, now_ms)
            if verdict is not None:
                body = verdict.text  # masked where a mask list hit
        msg_id = self.gw.ids.new()
        # sealed at rest, bound to its message id; opened only to build the frame that is sent
        payload = self.gw.sealer.seal(_enc(R.TextPayload(body)), msg_id.encode())
        if verdict is None:
            record = R.MessageRecord(workspace, sender, req.to, priority, req.client_ref, "accepted",
                                     [("accepted", now_ms)])
            pending = R.PendingRecord(sender, req.to, priority, payload)
            item = ops.AcceptItem(msg_id, _enc(record), _enc(pending))
            return Prepared(item, QueuedMessage(msg_id, sender, req.to, priority))
        return self._prepare_with_verdict(verdict, req, workspace, sender, priority, msg_id, payload, now_ms)

    def _prepare_with_verdict(self, verdict: Verdict, req: SendRequest, workspace: str, sender: str, priority: int,
                              msg_id: str, payload: bytes, now_ms: int) -> Prepared:
        policy = self.gw.policy
        record = policy.event_record(workspace, verdict, msg_id, sender, req.to, now_ms)
        flag = policy.flag_event(workspace, verdict, msg_id, sender, req.to, req.client_ref, now_ms)
        view = verdict.view(req.text.body)
        if verdict.action == "review":
            message = R.MessageRecord(workspace, sender, req.to, priority, req.client_ref, P.HELD, [(P.HELD, now_ms)])
            review = P.ReviewRecord(workspace, sender, req.to, priority, req.client_ref, payload, verdict.hits, now_ms)
            held = P.HeldItem(msg_id, ops.encode(message), ops.encode(review))
            return Prepared(None, None, held, verdict, record, flag, view)
        message = R.MessageRecord(workspace, sender, req.to, priority, req.client_ref, "accepted",
                                  [("accepted", now_ms)])
        pending = R.PendingRecord(sender, req.to, priority, payload)
        item = ops.AcceptItem(msg_id, ops.encode(message), ops.encode(pending))
        return Prepared(item, QueuedMessage(msg_id, sender, req.to, priority), None, verdict, record, flag, view)

    # -- handlers ---------------------------------------------------------------------------

    def send(self, request: Request, principal, params) -> Response | Deferred | Awaitable[Response]:
        """Answered without awaiting in the common case (see Gateway.handle_now): a plain message
        joins the open group commit and its 202 is a Deferred. A blocked message, a list hit and an
        Idempotency-Key hand back what must wait for its own commit."""
        try:
            req = _send_decoder.decode(request.body)
        except DECODE_ERRORS as exc:
            raise from_decode_error(exc) from None
        gw = self.gw
        gw.check_capacity(1)
        try:
            prepared = self.prepare(req, principal.workspace, gw.clock_ms())
        except Blocked as err:
            return self._refuse(err)
        if prepared.verdict is not None or "idempotency-key" in request.headers:
            return self._commit(request, principal, [prepared], 202, orjson.dumps(prepared.answer()))
        # The common case: answered by the group commit itself, no task waits for it.
        plain = self._plain
        if plain is None or plain.group.sealed:
            plain = self._plain = _PlainAccepts(gw)
            plain.batch = gw.writer.submit(ops.accept_group, plain.group, plain.committed)
        else:
            gw.writer.joined(plain.batch)
        return plain.add(prepared)

    async def _refuse(self, err: Blocked) -> Response:
        """A blocked message's 422 goes out once its policy event is stored."""
        await self.gw.policy.record_blocked([err.record])
        raise err

    async def send_batch(self, request: Request, principal, params) -> Response:
        try:
            batch = _batch_decoder.decode(request.body)
        except DECODE_ERRORS as exc:
            raise from_decode_error(exc) from None
        limit = self.gw.config.server.max_batch_messages
        if len(batch.messages) > limit:
            raise ApiError(422, "batch_too_large",
                           f"{len(batch.messages)} messages; a batch holds at most {limit}",
                           {"limit": limit})
        self.gw.check_capacity(len(batch.messages))
        now_ms = self.gw.clock_ms()
        results: list[dict] = []
        prepared: list[Prepared] = []
        blocked: list[tuple[bytes, bytes]] = []
        for index, raw in enumerate(batch.messages):
            if index and index % _BATCH_SLICE == 0:
                await trio.lowlevel.checkpoint()  # screening 1,000 long texts can take a while
            try:
                p = self.prepare(_send_decoder.decode(raw), principal.workspace, now_ms)
            except DECODE_ERRORS as exc:
                err = from_decode_error(exc, f"$.messages[{index}]")
                results.append({"index": index, "error": _error_body(err)})
                continue
            except ApiError as err:
                if isinstance(err, Blocked):
                    blocked.append(err.record)
                path = err.details.get("path")
                if path is not None and path.startswith("$"):  # the field within the batch
                    err.details = {**err.details, "path": f"$.messages[{index}]{path[1:]}"}
                results.append({"index": index, "error": _error_body(err)})
                continue
            prepared.append(p)
            results.append({"index": index, **p.answer()})
        body = orjson.dumps({
            "accepted": sum(1 for p in prepared if p.held is None),
            "held": sum(1 for p in prepared if p.held is not None),
            "rejected": len(results) - len(prepared),
            "results": results,
        })
        return await self._commit(request, principal, prepared, 202, body, blocked)

    async def _commit(self, request: Request, principal, prepared: list[Prepared], status: int,
                      body: bytes, blocked: list[tuple[bytes, bytes]] | None = None) -> Response:
        idem = request.headers.get("idempotency-key")
        idem_key = idem_record = None
        fingerprint = b""
        now = cutoff = 0
        if idem is not None:
            if not 0 < len(idem) <= _IDEM_MAX or not (idem.isascii() and idem.isprintable()):
                raise ApiError(400, "invalid_idempotency_key",
                               f"Idempotency-Key must be 1 to {_IDEM_MAX} printable ASCII characters")
            fingerprint = hashlib.sha256(request.method.encode() + b" " + request.path.encode()
                                         + b"\n" + request.body).digest()
            idem_key = R.idempotency_key(principal.workspace, idem)
            now = self.gw.clock_ms()
            cutoff = now - int(self.gw.config.store.idempotency_ttl_h * 3_600_000)
            # the answer can quote the text as sent (policy hits): sealed like every other text
            idem_record = ops.encode(R.IdempotencyRecord(fingerprint, status, self.gw.sealer.seal(body, idem_key), now))
        op, arg = self._accept_op(prepared, ops.AcceptArg(
            [p.item for p in prepared if p.item is not None], idem_key, idem_record, now, cutoff), blocked)
        try:
            earlier = await self.gw.writer.write(op, arg)
        except StorageFull:
            self.gw.metrics.storage_full.inc()
            retry = self.gw.config.store.storage_full_retry_after_s
            raise ApiError(503, "storage_full", "the message store is full; nothing was accepted",
                           retry_after=retry) from None
        except StorageError:
            raise ApiError(503, "storage_unavailable", "the message store failed; nothing was accepted",
                           retry_after=5) from None
        if earlier is not None:
            if earlier.fingerprint != fingerprint:
                raise ApiError(422, "idempotency_key_reused",
                               "this Idempotency-Key was used with a different request")
            try:
                first = self.gw.sealer.open(earlier.body, idem_key)
            except SealError:
                raise ApiError(503, "storage_unavailable",
                               "the first answer to this Idempotency-Key cannot be opened (data key missing)",
                               retry_after=60) from None
            return Response(earlier.status, first, headers=[("Idempotent-Replayed", "true")])
        self.gw.enqueue([p.queued for p in prepared if p.queued is not None])
        if op is P.accept_with_policy and arg.flags:
            self.gw.webhooks_wake({principal.workspace})
        return Response(status, body)

    def _accept_op(self, prepared: list[Prepared], accept: ops.AcceptArg, blocked):
        """ops.accept when no list hit (the fast path); else the policy variant that also stores held
        messages, the policy records and the policy.flagged webhook events in the same commit."""
        if not blocked and all(p.verdict is None for p in prepared):
            return ops.accept, accept
        held = [p.held for p in prepared if p.held is not None]
        records = list(blocked or ()) + [p.record for p in prepared if p.record is not None]
        flags = [p.flag for p in prepared if p.flag is not None]
        return P.accept_with_policy, P.PolicyAcceptArg(accept, held, records, flags, self.gw.event_ids)

    def get(self, request: Request, principal, params) -> Response:
        msg_id = unquote(params[0])
        record = self.gw.store.message(msg_id) if is_id(msg_id) else None
        if record is None:
            raw = self.gw.store.get("inbound", msg_id.encode()) if is_id(msg_id) else None
            inbound = R.inbound_decoder.decode(raw) if raw is not None else None
            if inbound is None or (inbound.workspace != principal.workspace and principal.role != "admin"):
                raise ApiError(404, "message_not_found", f"no message {msg_id}")
            return Response.json(200, inbound_view(msg_id, inbound))
        if record.workspace != principal.workspace and principal.role != "admin":
            raise ApiError(404, "message_not_found", f"no message {msg_id}")
        return Response.json(200, message_view(msg_id, record))


def inbound_view(msg_id: str, record: R.InboundRecord) -> dict:
    """A customer's message: no body, as for outbound messages (the app got it in message.received)."""
    view = {
        "id": msg_id,
        "direction": "inbound",
        "status": record.status,
        "from": record.sender,
        "to": record.recipient,
        "workspace": record.workspace,
        "network_id": record.network_id,
        "sent_at": rfc3339(record.sent_ms),
        "received_at": rfc3339(record.received_ms),
    }
    if record.reason:
        view["reason"] = record.reason
    return view


def message_view(msg_id: str, record: R.MessageRecord) -> dict:
    view = {
        "id": msg_id,
        "direction": "outbound",
        "status": record.status,
        "from": record.sender,
        "to": record.recipient,
        "priority": R.PRIORITY_NAMES[record.priority],
        "workspace": record.workspace,
        "timeline": [{"status": s, "at": rfc3339(at)} for s, at in record.events],
    }
    if record.client_ref is not None:
        view["client_ref"] = record.client_ref
    if record.reason:
        view["reason"] = record.reason
    return view


def _error_body(err: ApiError) -> dict:
    return {"code": err.code, "message": err.message, "details": err.details}
