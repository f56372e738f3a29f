"""Admin routes of the webhook endpoints: what each one has waiting, its dead letters (events that got
a final refusal or outlived `webhooks.max_age_h`), and sending those again once the endpoint is
fixed.

A route acts on the caller's workspace (`?workspace=` for another). Endpoints are shown by id and
origin only: a URL's path and query may carry a token. A listed dead letter names its event, type
and message, never its body (a `message.received` event holds a customer's text, sealed at rest).
"""
from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
import orjson
from msgspec import Meta, Struct

from gateway.api.errors import ApiError, from_decode_error
from gateway.api.policy import limit_param, query, target_workspace
from gateway.crypto.seal import SealError
from gateway.decoding import DECODE_ERRORS
from gateway.http.server import Request, Response
from gateway.ids import is_id, timestamp_ms
from gateway.store import ops
from gateway.store import records as R
from gateway.store.ops import rfc3339

REPLAY_MAX = 10_000  # dead letters sent again per request (a request stays a few ms of the event loop)
COUNT_MAX = 10_000  # dead letters counted per endpoint in the listing
_ENDPOINT = re.compile(r"[0-9a-f]{16}\Z")

EventId = Annotated[str, Meta(pattern=r"^[0-7][0-9A-HJKMNP-TV-Z]{25}\Z")]  # \Z: "$" takes a trailing newline


class ReplayRequest(Struct, forbid_unknown_fields=True):
    endpoint: Annotated[str, Meta(pattern=r"^[0-9a-f]{16}\Z")] | None = None
    event_ids: Annotated[list[EventId], Meta(min_length=1, max_length=REPLAY_MAX)] | None = None
    limit: Annotated[int, Meta(ge=1, le=REPLAY_MAX)] = 1000


def origin(url: str) -> str:
    """scheme://host[:port] of an endpoint's URL: no credentials, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhooksApi:
    def __init__(self, gw) -> None:
        self.gw = gw

    def _endpoints(self, workspace: str, wanted: str | None = None) -> list:
        eps = [ep for ep in self.gw.webhooks.endpoints.values() if ep.workspace == workspace]
        if wanted is not None:
            eps = [ep for ep in eps if ep.id.decode() == wanted]
            if not eps:
                raise ApiError(404, "endpoint_not_found", f"no webhook endpoint {wanted!r} in workspace "
                               f"{workspace!r}", {"endpoint": wanted, "workspace": workspace})
        return sorted(eps, key=lambda ep: ep.id)

    def _wanted_endpoint(self, request: Request) -> str | None:
        wanted = query(request).get("endpoint")
        if wanted is not None and not _ENDPOINT.match(wanted):
            raise ApiError(422, "invalid_field", "endpoint: expected an endpoint id (16 hex digits)",
                           {"path": "endpoint"})
        return wanted

    async def list_endpoints(self, request: Request, principal, params) -> Response:
        workspace = target_workspace(self.gw, request, principal)
        store = self.gw.store
        out = []
        with store.env.begin(db=store.dbs["webhook_dead"]) as txn:
            for ep in self._endpoints(workspace):
                dead = _count(txn.cursor(), ep.prefix, COUNT_MAX)
                out.append({"id": ep.id.decode(), "origin": origin(ep.url), "queued": self.gw.webhooks.queued(ep),
                            "dead_letters": dead, "dead_letters_counted_to": COUNT_MAX})
        return Response.json(200, {"workspace": workspace, "endpoints": out})

    async def dead_letters(self, request: Request, principal, params) -> Response:
        """Dead letters of the workspace's endpoints (`?endpoint=` one of them, `?limit=`): endpoint by
        endpoint (in id order), each one's oldest first. A full page ends with `next`, the position
        to go on from (`<endpoint id>.<event id>`), given back as `?after=`."""
        workspace = target_workspace(self.gw, request, principal)
        wanted = self._wanted_endpoint(request)
        after = query(request).get("after")
        position = None
        if after is not None:
            ep_id, _, event_id = after.partition(".")
            if not _ENDPOINT.match(ep_id) or not is_id(event_id) or (wanted is not None and ep_id != wanted):
                raise ApiError(422, "invalid_field", "after: the `next` of the page before (<endpoint id>.<event id>)",
                               {"path": "after"})
            position = (ep_id.encode(), event_id.encode())
        eps = self._endpoints(workspace, wanted)
        limit = limit_param(request)
        store = self.gw.store
        out: list[dict] = []
        next_page = None
        with store.env.begin(db=store.dbs["webhook_dead"], buffers=False) as txn:
            cur = txn.cursor()
            for ep in eps:
                start = ep.prefix
                if position is not None:
                    if ep.id < position[0]:
                        continue  # listed on the pages before
                    if ep.id == position[0]:
                        start = ep.prefix + position[1] + b"\0"  # just past the last one listed
                found = cur.set_range(start)
                while found:
                    key, raw = cur.item()
                    if not key.startswith(ep.prefix):
                        break
                    if len(out) >= limit:
                        next_page = f"{out[-1]['endpoint']}.{out[-1]['event_id']}"
                        break
                    out.append(self._view(ep, key[len(ep.prefix):], R.dead_letter_decoder.decode(raw)))
                    found = cur.next()
                if next_page is not None:
                    break
        return Response.json(200, {"workspace": workspace, "dead_letters": out, "next": next_page})

    def _view(self, ep, event_id: bytes, dead: R.DeadLetter) -> dict:
        kind = message_id = None
        event = dead.event
        try:
            if event.startswith(ops.SEALED_EVENT):
                event = self.gw.sealer.open(event[len(ops.SEALED_EVENT):], event_id)
            parsed = orjson.loads(event)
            kind = parsed.get("type")
            message_id = (parsed.get("data") or {}).get("message_id")
        except (SealError, orjson.JSONDecodeError, AttributeError):
            pass  # listed all the same, without what could not be read
        text_id = event_id.decode()
        return {"endpoint": ep.id.decode(), "event_id": text_id, "type": kind, "message_id": message_id,
                "created_at": rfc3339(timestamp_ms(text_id)) if is_id(text_id) else None,
                "dead_at": rfc3339(dead.at_ms), "attempts": dead.attempts, "last_error": dead.last_error}

    async def replay(self, request: Request, principal, params) -> Response:
        """Send dead letters again: `{"endpoint"?, "event_ids"?, "limit"?}` (`limit`, 1,000 by default,
        taken endpoint by endpoint, each one's oldest first). They go back to the outbox in one
        commit, audited, and out at once; a delivery that fails again counts its age from now."""
        workspace = target_workspace(self.gw, request, principal)
        try:
            req = msgspec.json.decode(request.body or b"{}", type=ReplayRequest)
        except DECODE_ERRORS as exc:
            raise from_decode_error(exc) from None
        eps = self._endpoints(workspace, req.endpoint)
        gw = self.gw
        now = gw.clock_ms()
        event_ids = [e.encode() for e in req.event_ids] if req.event_ids is not None else None
        # an event id names one event at each endpoint it went to
        limit = len(event_ids) * len(eps) if event_ids is not None else req.limit

        def audit(n: int):
            return gw.policy.audit_entry(principal, workspace, "webhook.replay", req.endpoint or "*",
                                         {"replayed": n}, now)

        arg = ops.ReplayArg([ep.prefix for ep in eps], event_ids, limit, audit)
        moved = await gw.policy.write(ops.replay_dead, arg)
        gw.webhooks.requeue(moved, now)
        store = gw.store
        with store.env.begin(db=store.dbs["webhook_dead"]) as txn:
            left = sum(_count(txn.cursor(), ep.prefix, COUNT_MAX) for ep in eps)
        return Response.json(200, {"workspace": workspace, "replayed": len(moved), "dead_letters_left": left})


def _count(cur, prefix: bytes, most: int) -> int:
    n = 0
    found = cur.set_range(prefix)
    while found and n < most:
        if not cur.key().startswith(prefix):
            break
        n += 1
        found = cur.next()
    return n
