"""The policy shell: loads the sensitive-word files and the lists set through the API, builds each
workspace's `Rules` off the event loop and swaps them in whole; screens every outgoing text (opt-out,
then the lists); keeps opt-outs and answers STOP / START keywords. Everything it changes goes
through the writer and is audited.

It owns no HTTP (api/policy.py, api/reviews.py) and never holds the event loop for a build: a
100,000-term list is decoded, built and encoded in a worker thread that yields the GIL and the CPU
to the loop every few dozen terms and between automaton shards (see policy/scanner.py), and, with
automatic collection off meanwhile, collects the young objects in small steps itself, so neither a
long C call nor a long garbage collection stalls the loop.
The rules a change replaces are freed there too, an automaton at a time (policy/release.py).
"""
from __future__ import annotations

import gc
import logging
import os
import re
import threading
import tomllib
from collections.abc import Collection
from typing import Annotated

import msgspec
import trio
from msgspec import Meta, Struct

from gateway import config as C
from gateway.api.errors import ApiError
from gateway.ids import IdGenerator
from gateway.policy.engine import (MAX_TERMS, PIECE_BYTES, Action, Engine, Rules, TermInput, Verdict, WordList,
                                   decode_word_list, dedicated_workspaces, effective_lists)
from gateway.policy.optout import KeywordMatch, OptOutKeywords
from gateway.policy.release import RulesReleaser
from gateway.store import policy_ops as P
from gateway.store import records as R
from gateway.threads import yield_to_loop
from gateway.store.writer import StorageError, StorageFull

log = logging.getLogger("gateway.policy")

FileLists = dict[str, tuple[WordList, tuple[str, ...] | None]]
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class WordFile(Struct, frozen=True, forbid_unknown_fields=True):
    """configs/sensitive-words/<category>.toml"""

    action: Action
    terms: Annotated[list[TermInput], Meta(max_length=MAX_TERMS)]
    whole_word: bool | None = None
    workspaces: list[C.Name] | None = None  # None: every workspace


def words_dir(cfg: C.Config, config_path: str | None) -> str | None:
    """The folder of sensitive-word files for this config, or None when there is none to read."""
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
    configured = cfg.policy.sensitive_words_dir
    if not configured:
        default = os.path.join(base, "sensitive-words")
        return default if os.path.isdir(default) else None
    return configured if os.path.isabs(configured) else os.path.join(base, configured)


def load_word_files(directory: str | None, workspaces: Collection[str] | None = None) -> FileLists:
    """Every `<category>.toml` in `directory`, validated (its `workspaces` among `workspaces`, when
    given: a misspelt name would apply the list nowhere, silently); ConfigError names the file and
    the path."""
    if directory is None:
        return {}
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
    except OSError as exc:
        raise C.ConfigError(directory, [f"policy.sensitive_words_dir: cannot read: {exc.strerror}"]) from None
    out: FileLists = {}
    for name in names:
        path = os.path.join(directory, name)
        category = name[:-len(".toml")]
        if _CATEGORY.fullmatch(category) is None:
            raise C.ConfigError(path, ["file name: a category is 1-63 characters of a-z 0-9 _ -, "
                                       "starting with a letter or digit"])
        try:
            with open(path, "rb") as f:
                raw = tomllib.loads(f.read().decode("utf-8"))
            spec = msgspec.convert(raw, WordFile, strict=True)
        except OSError as exc:
            raise C.ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise C.ConfigError(path, [f"TOML syntax: {exc}"]) from None
        except RecursionError:
            raise C.ConfigError(path, [C.NESTED_TOO_DEEPLY]) from None
        except msgspec.ValidationError as exc:
            raise C.ConfigError(path, [C._msgspec_problem(exc)]) from None
        for i, term in enumerate(spec.terms):
            text = term if isinstance(term, str) else term.text
            if not any(ch.isalnum() for ch in text):
                raise C.ConfigError(path, [f"terms[{i}]: {text!r} has no letter or digit"])
        for i, name_ in enumerate(spec.workspaces or ()):
            if workspaces is not None and name_ not in workspaces:
                raise C.ConfigError(path, [f"workspaces[{i}]: no workspace {name_!r} in the config"])
        wl = WordList(spec.action, spec.terms, spec.whole_word)
        out[category] = (wl, tuple(spec.workspaces) if spec.workspaces is not None else None)
    return out


GC_STEP = 1_000  # young container objects a builder lets pile up before it collects them (~0.1-0.2 ms)
COLLECT_EVERY = 16  # pauses between two collections in any case (~500 terms or keys)


class _BuilderGc:
    """While a builder runs in a worker thread, automatic collection is off for the whole process
    and the builder's pauses collect the young generation instead (see `_pause`; the event loop's
    young objects go with it). A build makes ~3 container objects per term; left to automatic
    collection, a pass of an older generation would traverse a 100,000-term build's structures,
    holding the GIL for 5-20 ms in one go. Older generations are collected as usual again once the
    last builder is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builders = 0
        self._restore = False
        self.collects = False  # whether the builders' pauses collect (automatic collection was on)
        self.pauses = 0

    def __enter__(self) -> None:
        with self._lock:
            if not self._builders:
                self._restore = self.collects = gc.isenabled()
                gc.disable()
            self._builders += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._builders -= 1
            if not self._builders:
                self.collects = False
                if self._restore:
                    gc.enable()


_BUILDER_GC = _BuilderGc()


def _pause() -> None:
    """Called by a builder in a worker thread between two short steps. It also collects every
    COLLECT_EVERY pauses: the young count alone misses what a build keeps, because freeing its
    older build data counts the young generation down (~140,000 young tuples of a 100,000-term
    build then wait for one 20-25 ms pass)."""
    gcs = _BUILDER_GC
    if gcs.collects:
        gcs.pauses += 1
        if gcs.pauses % COLLECT_EVERY == 0 or gc.get_count()[0] >= GC_STEP:
            gc.collect(0)
    yield_to_loop()




def _building(fn, *args):
    """`fn(*args)` in a worker thread as a builder: under _BuilderGc, pausing with `_pause`."""
    with _BUILDER_GC:
        return fn(*args, _pause)


def _build_with_record(lists: dict[str, WordList], record, pause) -> tuple[Rules | None, bytes | None]:
    """The rules and the encoded list record (a 100,000-term record takes ~2 ms to encode)."""
    rules = Rules.build(lists, pause)
    return rules, (P.encode(record) if record is not None else None)


class Blocked(ApiError):
    """422 sensitive_content; `record` is the policy_events entry to store for it."""

    def __init__(self, text: str, verdict: Verdict, record: tuple[bytes, bytes]) -> None:
        hits = [h.view(text) for h in verdict.hits if h.action == "block"]
        terms = ", ".join(sorted({f"{h['term']!r} ({h['category']})" for h in hits}))
        super().__init__(422, "sensitive_content", f"text.body contains blocked terms: {terms}",
                         {"path": "$.text.body", "hits": hits})
        self.record = record


class PolicyService:
    def __init__(self, gw) -> None:
        self.gw = gw
        self.engine = Engine()
        self.releaser = RulesReleaser()  # frees what the engine lets go of, off the loop (see `run`)
        self.ids = IdGenerator()
        self._lock = trio.Lock()  # one list change (build + write + swap) at a time
        self._files: FileLists = {}
        self._api: dict[str, dict[str, P.WordListRecord]] = {}
        self._flag_targets: dict[str, list[bytes]] = {}
        self._keywords = OptOutKeywords.build(gw.config.policy.opt_out.languages, gw.config.policy.opt_out.keywords)
        self._opt_outs = gw.store.count("opt_outs")
        self._rebuild_wanted = trio.Event()
        self._pending_files: FileLists | None = None
        self._wanted_files: FileLists = {}  # the files the last configure asked for (built or not)
        # rebuilds asked for by configure, and the last of them that is in place (or failed), so that
        # every reload's wait ends, however many reloads overlap
        self._asked = self._settled = 0
        self._rebuilt = trio.Event()  # set (and replaced) each time a rebuild ends
        reg = gw.metrics.registry
        self.hits = reg.counter("gateway_policy_hits_total", "Sensitive-word hits by category and action.",
                                ("category", "action"))
        self.verdicts = reg.counter("gateway_policy_verdicts_total",
                                    "Messages with a sensitive-word verdict, by action.", ("action",))
        self.opt_out_refusals = reg.counter("gateway_opt_out_refusals_total",
                                            "Sends refused because the contact opted out.")
        reg.gauge("gateway_reviews_held", "Messages held for review.", lambda: [((), gw.store.count("reviews"))])
        for key, raw in gw.store.scan("word_lists"):
            ws, _, category = key.decode().partition("\0")
            self._api.setdefault(ws, {})[category] = P.word_list_decoder.decode(raw)
        self.configure(gw.config, gw.config_path, build_now=True)

    # -- configuration and (re)building ----------------------------------------------------------

    def configure(self, cfg: C.Config, config_path: str | None, build_now: bool = False) -> bool:
        """Read the word files of `cfg` (ConfigError if one is bad: nothing changes) and take its opt-out
        keywords and webhook targets. At start the rules are built here; on reload `run` rebuilds them
        off the event loop. Returns whether the word files changed."""
        files = load_word_files(words_dir(cfg, config_path), [ws.name for ws in cfg.workspaces])
        self._keywords = OptOutKeywords.build(cfg.policy.opt_out.languages, cfg.policy.opt_out.keywords)
        self._flag_targets = _flag_targets(cfg)
        changed = files != self._wanted_files  # (not the files in force: a rebuild may be under way)
        if build_now:
            try:
                default, by_ws = self._build_all(files)
            except ValueError as exc:
                raise C.ConfigError(words_dir(cfg, config_path) or "<policy>", [str(exc)]) from None
            self._files = self._wanted_files = files
            self.releaser.release(self.engine.swap(default, by_ws))
        elif changed:
            self._pending_files = self._wanted_files = files
            self._asked += 1
            self._rebuild_wanted.set()
        return changed

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Rebuilds every workspace's rules after a reload changed the word files, and frees the rules
        that changes replace."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.releaser.run, _pause)
            task_status.started()
            await self._rebuild_on_reload()

    async def _rebuild_on_reload(self) -> None:
        while True:
            await self._rebuild_wanted.wait()
            self._rebuild_wanted = trio.Event()
            async with self._lock:
                files, asked = self._pending_files, self._asked
                if files is not None:
                    self._pending_files = None
                    try:
                        default, by_ws = await trio.to_thread.run_sync(_building, self._build_all, files)
                    except ValueError as exc:
                        log.error("sensitive-word files not applied, the old lists stay: %s", exc)
                    else:
                        self._files = files
                        self.releaser.release(self.engine.swap(default, by_ws))
                        log.info("sensitive-word lists rebuilt from the files (%d categories)", len(files))
            self._settled = max(self._settled, asked)
            done, self._rebuilt = self._rebuilt, trio.Event()
            done.set()

    async def settled(self) -> None:
        """Wait until the rebuilds asked for by `configure` so far are in place (or failed)."""
        want = self._asked
        while self._settled < want:
            await self._rebuilt.wait()

    def _lists(self, files: FileLists, workspace: str | None) -> dict[str, WordList]:
        api = {c: rec.words for c, rec in self._api.get(workspace, {}).items()} if workspace else {}
        return effective_lists(files, api, workspace)

    def _build_all(self, files: FileLists, pause=None) -> tuple[Rules | None, dict[str, Rules | None]]:
        default = Rules.build(self._lists(files, None), pause)
        by_ws = {ws: Rules.build(self._lists(files, ws), pause) for ws in dedicated_workspaces(files, self._api)}
        return default, by_ws

    # -- word lists through the API ----------------------------------------------------------------

    def lists_view(self, workspace: str, with_terms: str | None = None) -> dict:
        """Every list in force for the workspace, with its term count; the terms themselves only for
        the category `with_terms` (a list can hold 100,000 of them)."""
        api = self._api.get(workspace, {})
        out = []
        for category, wl in sorted(self._lists(self._files, workspace).items()):
            view = wl.view() if category == with_terms else {"action": wl.action, "whole_word": wl.whole_word}
            entry = {"category": category, **view, "term_count": len(wl.terms),
                     "source": "api" if category in api else "file"}
            if category in api:
                entry["updated_at"] = _rfc3339(api[category].updated_ms)
                entry["updated_by"] = api[category].updated_by
            out.append(entry)
        return {"workspace": workspace, "lists": out}

    async def put_list(self, workspace: str, category: str, words: WordList | None, principal) -> bool:
        """Set (or with None, delete) a workspace's list; in force when this returns. Returns whether
        the workspace had an API list of that category before."""
        now = self.gw.clock_ms()
        async with self._lock:
            api = dict(self._api.get(workspace, {}))
            if words is None:
                api.pop(category, None)
            else:
                api[category] = P.WordListRecord(words, now, principal.key_id)
            lists = effective_lists(self._files, {c: r.words for c, r in api.items()}, workspace)
            try:
                rules, record = await trio.to_thread.run_sync(_building, _build_with_record, lists,
                                                              api[category] if words is not None else None)
            except ValueError as exc:
                raise ApiError(422, "invalid_term", str(exc), {"path": "$.terms"}) from None
            detail = {"category": category, "action": words.action, "terms": len(words.terms)} if words else \
                {"category": category}
            audit = self.audit_entry(principal, workspace, "sensitive_words." + ("put" if words else "delete"),
                                     category, detail, now)
            existed = await self.write(P.put_word_list, (P.word_list_key(workspace, category), record, audit))
            if api:
                self._api[workspace] = api
            else:
                self._api.pop(workspace, None)
            if workspace in dedicated_workspaces(self._files, self._api):
                self.releaser.release(self.engine.set_workspace(workspace, rules))
            else:
                self.releaser.release(self.engine.drop_workspace(workspace))
            return existed

    async def decode_list(self, body: bytes) -> WordList:
        """A PUT body as a WordList (one of DECODE_ERRORS as the decoder gives it); a big one is decoded
        in pieces in a worker thread."""
        if len(body) <= PIECE_BYTES:
            return decode_word_list(body)
        return await trio.to_thread.run_sync(_building, decode_word_list, body)

    def has_api_list(self, workspace: str, category: str) -> bool:
        return category in self._api.get(workspace, {})

    # -- screening outgoing messages (the accept path) --------------------------------------------

    def screening(self, workspace: str) -> bool:
        """False when nothing can refuse or change a message of this workspace (skip all work)."""
        return self._opt_outs > 0 or self.engine.active(workspace)

    def screen(self, workspace: str, sender: str, recipient: str, priority: int, text: str,
               now_ms: int) -> Verdict | None:
        """Refuses (ApiError 422 recipient_opted_out, Blocked) or returns the verdict (None: no hit)."""
        if self._opt_outs and self.opted_out(workspace, sender, recipient):
            urgent_allowed = self.gw.config.policy.opt_out.urgent_allowed
            if not (priority == R.URGENT and urgent_allowed):
                self.opt_out_refusals.inc()
                hint = "; only urgent (transactional) messages still go" if urgent_allowed else ""
                raise ApiError(422, "recipient_opted_out", f"{recipient} opted out of messages from {sender}{hint}",
                               {"path": "$.to", "to": recipient, "from": sender})
        verdict = self.engine.verdict(workspace, text)
        if verdict is None:
            return None
        for h in verdict.hits:
            self.hits.inc((h.category, h.action))
        self.verdicts.inc((verdict.action,))
        if verdict.action == "block":
            raise Blocked(text, verdict, self.event_record(workspace, verdict, None, sender, recipient, now_ms))
        return verdict

    def event_record(self, workspace: str, verdict: Verdict, msg_id: str | None, sender: str, recipient: str,
                     now_ms: int) -> tuple[bytes, bytes]:
        rec = P.PolicyEventRecord(now_ms, workspace, verdict.action, msg_id, sender, recipient, verdict.hits)
        return self.ids.new().encode(), P.encode(rec)

    def flag_event(self, workspace: str, verdict: Verdict, msg_id: str, sender: str, recipient: str,
                   client_ref: str | None, now_ms: int) -> tuple[list[bytes], dict] | None:
        """(endpoints, data) of the policy.flagged webhook for a message with flag hits, or None."""
        flagged = verdict.flagged()
        targets = self._flag_targets.get(workspace)
        if not flagged or not targets:
            return None
        data = {"message_id": msg_id, "workspace": workspace, "from": sender, "to": recipient,
                "at": _rfc3339(now_ms), "action": verdict.action,
                "hits": [{"term": h.term, "category": h.category, "start": h.start, "end": h.end} for h in flagged]}
        if client_ref is not None:
            data["client_ref"] = client_ref
        return targets, data

    async def record_blocked(self, records: list[tuple[bytes, bytes]]) -> None:
        """Store the records of refused requests; a full store costs the record, never the answer."""
        try:
            await self.gw.writer.write(P.put_policy_records, records)
        except (StorageFull, StorageError):
            log.warning("%d policy records of blocked requests not stored: the store refused", len(records))

    # -- opt-outs ---------------------------------------------------------------------------------

    def opted_out(self, workspace: str, sender: str, contact: str) -> bool:
        return self.gw.store.get("opt_outs", P.opt_out_key(workspace, sender, contact)) is not None

    def opt_out_view(self, workspace: str, sender: str, contact: str) -> dict | None:
        raw = self.gw.store.get("opt_outs", P.opt_out_key(workspace, sender, contact))
        if raw is None:
            return None
        rec = P.opt_out_decoder.decode(raw)
        return {"workspace": workspace, "sender": sender, "contact": contact, "opted_out": True,
                "at": _rfc3339(rec.at_ms), "source": rec.source, "detail": rec.detail}

    async def set_opt_out(self, workspace: str, sender: str, contact: str, opted_out: bool, *, source: str,
                          detail: str, actor: str, role: str) -> None:
        now = self.gw.clock_ms()
        record = P.encode(P.OptOutRecord(now, source, detail)) if opted_out else None
        audit = self.audit_entry_raw(actor, role, workspace, "opt_out." + ("set" if opted_out else "clear"),
                                     f"{sender}/{contact}", {"source": source, "detail": detail}, now)
        delta = await self.write(P.set_opt_out, (P.opt_out_key(workspace, sender, contact), record, audit))
        self._opt_outs = max(0, self._opt_outs + delta)

    async def on_inbound_text(self, workspace: str, sender: str, contact: str, text: str) -> str | None:
        """For the inbound path: a STOP keyword opts `contact` out of marketing from `sender` in this
        workspace, START opts it back in; either returns the confirmation to send back (in the
        keyword's language). Any other text returns None and changes nothing."""
        match = self.keyword(text)
        if match is None:
            return None
        await self.set_opt_out(workspace, sender, contact, match.kind == "stop", source="keyword",
                               detail=f"{match.language}:{match.keyword}", actor=f"contact:{contact}", role="contact")
        return match.reply

    def keyword(self, text: str) -> KeywordMatch | None:
        return self._keywords.match(text)

    # -- the inbound path: effects committed together with the inbound message ---------------------

    def inbound_keyword(self, workspace: str, sender: str, contact: str, text: str,
                        now_ms: int) -> tuple[tuple, str] | None:
        """What `on_inbound_text` does, as data for the inbound commit: the `policy_ops.set_opt_out`
        argument (opt-out record or its removal, and the audit entry) and the confirmation to send
        back. None for any text that is not a keyword. Call `opt_outs_changed` with the op's result."""
        match = self.keyword(text)
        if match is None:
            return None
        stop = match.kind == "stop"
        detail = f"{match.language}:{match.keyword}"
        record = P.encode(P.OptOutRecord(now_ms, "keyword", detail)) if stop else None
        audit = self.audit_entry_raw(f"contact:{contact}", "contact", workspace,
                                     "opt_out." + ("set" if stop else "clear"), f"{sender}/{contact}",
                                     {"source": "keyword", "detail": detail}, now_ms)
        return (P.opt_out_key(workspace, sender, contact), record, audit), match.reply

    def opt_outs_changed(self, delta: int) -> None:
        self._opt_outs = max(0, self._opt_outs + delta)

    def inbound_flag(self, workspace: str, text: str, msg_id: str, contact: str, number: str,
                     now_ms: int) -> tuple[tuple[bytes, bytes], tuple[list[bytes], dict] | None] | None:
        """Inbound texts are scanned and flagged, never blocked or changed: every hit, whatever its
        list's action, is reported as a flag. (policy_events record, (endpoints, policy.flagged
        data) or None without endpoints), or None when nothing hits."""
        verdict = self.engine.verdict(workspace, text)
        if verdict is None:
            return None
        for h in verdict.hits:
            self.hits.inc((h.category, "flag"))
        self.verdicts.inc(("flag",))
        rec = P.PolicyEventRecord(now_ms, workspace, "flag", msg_id, contact, number, verdict.hits)
        record = (self.ids.new().encode(), P.encode(rec))
        targets = self._flag_targets.get(workspace)
        if not targets:
            return record, None
        data = {"message_id": msg_id, "workspace": workspace, "direction": "inbound", "from": contact,
                "to": number, "at": _rfc3339(now_ms), "action": "flag",
                "hits": [{"term": h.term, "category": h.category, "start": h.start, "end": h.end}
                         for h in verdict.hits]}
        return record, (targets, data)

    # -- audit and writes -------------------------------------------------------------------------

    def audit_entry(self, principal, workspace: str, action: str, target: str, detail: dict, now_ms: int):
        return self.audit_entry_raw(principal.key_id, principal.role, workspace, action, target, detail, now_ms)

    def audit_entry_raw(self, actor: str, role: str, workspace: str, action: str, target: str, detail: dict,
                        now_ms: int) -> P.Audit:
        rec = P.AuditRecord(now_ms, actor, role, workspace, action, target, detail)
        return self.ids.new().encode(), P.encode(rec)

    async def write(self, op, arg):
        try:
            return await self.gw.writer.write(op, arg)
        except (StorageFull, StorageError):
            raise ApiError(503, "storage_full", "the store refused the change; nothing was changed",
                           retry_after=self.gw.config.store.storage_full_retry_after_s) from None


def _flag_targets(cfg: C.Config) -> dict[str, list[bytes]]:
    """Endpoints that take policy.flagged events."""
    from gateway.webhooks.dispatcher import endpoint_id

    out: dict[str, list[bytes]] = {}
    for ws in cfg.workspaces:
        for hook in ws.webhooks:
            if "policy.flagged" in hook.events:
                out.setdefault(ws.name, []).append(endpoint_id(ws.name, hook.url))
    return out


def _rfc3339(ms: int) -> str:
    from gateway.store.ops import rfc3339
    return rfc3339(ms)
