"""The policy shell against a real store and writer (no sockets): word lists from files and through
the API (persisted, audited, in force at once), screening of outgoing messages, review decisions,
opt-outs and the inbound STOP / START hook."""
import gc
import os
import threading

import msgspec
import pytest
import trio

from bench.policy_scan import terms
from gateway.api.errors import ApiError
from gateway.api.messages import SendRequest
from gateway.app import Gateway
from gateway.cli import GC_THRESHOLDS
from gateway.config import ConfigError, load_config
from gateway.crypto.keydir import init_keys
from gateway.http.auth import Principal
from gateway.policy import scanner as scanner_module
from gateway.policy.engine import WordList
from gateway.policy.service import Blocked, _BuilderGc
from gateway.store import ops
from gateway.store import policy_ops as P
from gateway.store import records as R
from tests.test_policy_release import Freeing

CONFIG = """
[store]
data_dir = "{data_dir}"
map_size_mb = 32

[policy]
sensitive_words_dir = "words"
{policy}

[[workspaces]]
name = "default"
default_sender = "+15550000001"
[[workspaces.webhooks]]
url = "http://127.0.0.1:9/hooks"
secret_file = "{data_dir}/hook.secret"

[[workspaces]]
name = "other"

[[senders]]
number = "+15550000001"
rate_per_minute = 60

[[senders]]
number = "+15550000009"
workspace = "other"
rate_per_minute = 60
"""
ADMIN = Principal("k1", "default", "admin")
TO = "+14155550100"


def write_config(tmp_path, policy: str = "", files: dict | None = None) -> str:
    os.makedirs(tmp_path / "words", exist_ok=True)
    (tmp_path / "hook.secret").write_text("s3cret-for-tests-only-0123456789")
    for name, text in (files or {}).items():
        (tmp_path / "words" / name).write_text(text)
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(data_dir=tmp_path, policy=policy))
    return str(path)


def make_gateway(tmp_path, policy: str = "", files: dict | None = None) -> Gateway:
    path = write_config(tmp_path, policy, files)
    init_keys(str(tmp_path / "keys"))
    return Gateway(load_config(path), config_path=path)


async def running(gw: Gateway, body):
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.writer.run)
            await nursery.start(gw.policy.run)
            await body(gw)
            nursery.cancel_scope.cancel()
    finally:
        gw.close()


def send_request(text: str, to: str = TO, priority: str = "normal") -> SendRequest:
    return msgspec.convert({"to": to, "text": {"body": text}, "priority": priority}, SendRequest)


def audit_actions(gw) -> list[str]:
    return [P.audit_decoder.decode(raw).action for _, raw in gw.store.scan("audit")]


SPAM_FILE = 'action = "flag"\nterms = ["free"]\n'


async def test_file_lists_apply_to_every_workspace_at_start(tmp_path):
    async def body(gw):
        assert gw.policy.engine.verdict("default", "a free gift").action == "flag"
        assert gw.policy.engine.verdict("other", "a free gift").action == "flag"
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


async def test_a_file_list_naming_workspaces_applies_only_to_them(tmp_path):
    files = {"vip.toml": 'action = "block"\nworkspaces = ["other"]\nterms = ["discount"]\n'}

    async def body(gw):
        assert gw.policy.engine.verdict("default", "discount") is None
        assert gw.policy.engine.verdict("other", "discount").action == "block"
    await running(make_gateway(tmp_path, files=files), body)


async def test_overlapping_reloads_each_end_and_the_last_files_win(tmp_path):
    async def body(gw):
        words = tmp_path / "words" / "spam.toml"
        waits: list[str] = []

        async def reload_and_settle(tag: str) -> None:
            await gw.reload()
            await gw.policy.settled()
            waits.append(tag)

        with trio.fail_after(30):
            # a big list, so that the second reload comes while the first one's rebuild runs
            words.write_text('action = "block"\nterms = [' + ", ".join(f'"w{i}x"' for i in range(20_000)) + ']\n')
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reload_and_settle, "big")
                await trio.sleep(0.05)
                words.write_text(SPAM_FILE)  # back to the files in force before the first reload
                nursery.start_soon(reload_and_settle, "back")
        assert sorted(waits) == ["back", "big"]
        assert gw.policy.engine.verdict("default", "w7x") is None
        assert gw.policy.engine.verdict("default", "free stuff").action == "flag"
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


@pytest.mark.parametrize("text,problem", [
    ('action = "shout"\nterms = ["x"]\n', "action"),
    ('action = "flag"\nterms = ["ok", "!!"]\n', "terms[1]"),
    ('action = "flag"\nterms = "free"\n', "terms"),
    ('action = "flag"\nterms = ["a"]\nspeed = 3\n', "speed"),
    ("action = [", "TOML syntax"),
    ("action = " + "[" * 5000, "nested too deeply"),
    ('action = "block"\nworkspaces = ["defualt"]\nterms = ["x1"]\n', "workspaces[0]: no workspace 'defualt'"),
])
def test_a_bad_word_file_is_refused_with_its_path(tmp_path, text, problem):
    with pytest.raises(ConfigError) as err:
        make_gateway(tmp_path, files={"spam.toml": text})
    assert err.value.source.endswith("spam.toml") and problem in "; ".join(err.value.problems)


async def test_reload_rebuilds_changed_files_and_refuses_a_bad_one(tmp_path):
    async def body(gw):
        (tmp_path / "words" / "spam.toml").write_text('action = "block"\nterms = ["free", "win"]\n')
        assert "sensitive_words" in await gw.reload()
        await gw.policy.settled()
        assert gw.policy.engine.verdict("default", "you win").action == "block"
        (tmp_path / "words" / "spam.toml").write_text('action = "nope"\nterms = ["free"]\n')
        with pytest.raises(ConfigError):
            await gw.reload()
        assert gw.policy.engine.verdict("default", "you win").action == "block"
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


async def test_api_list_is_in_force_when_put_returns_persisted_and_audited(tmp_path):
    async def body(gw):
        existed = await gw.policy.put_list("default", "spam", WordList("block", ["free"]), ADMIN)
        assert not existed
        assert gw.policy.engine.verdict("default", "free").action == "block"
        assert gw.policy.engine.verdict("other", "free").action == "flag"  # the file list still applies there
        assert audit_actions(gw) == ["sensitive_words.put"]
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)

    async def after_restart(gw):
        assert gw.policy.engine.verdict("default", "free").action == "block"
        await gw.policy.put_list("default", "spam", None, ADMIN)  # delete: the file list applies again
        assert gw.policy.engine.verdict("default", "free").action == "flag"
        assert audit_actions(gw) == ["sensitive_words.put", "sensitive_words.delete"]
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), after_restart)


async def test_an_empty_api_list_switches_a_file_category_off_for_its_workspace(tmp_path):
    async def body(gw):
        await gw.policy.put_list("default", "spam", WordList("flag", []), ADMIN)
        assert gw.policy.engine.verdict("default", "free") is None
        assert not gw.policy.screening("default")
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


async def test_an_api_list_with_a_term_that_cannot_match_changes_nothing(tmp_path):
    async def body(gw):
        with pytest.raises(ApiError) as err:
            await gw.policy.put_list("default", "spam", WordList("block", ["free", "..."]), ADMIN)
        assert err.value.code == "invalid_term"
        assert gw.policy.engine.verdict("default", "free").action == "flag"
        assert gw.store.count("word_lists") == 0 and audit_actions(gw) == []
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


async def test_prepare_gives_each_message_its_own_verdict(tmp_path):
    async def body(gw):
        await gw.policy.put_list("default", "fraud", WordList("block", ["send your pin"]), ADMIN)
        await gw.policy.put_list("default", "abuse", WordList("mask", ["idiot"]), ADMIN)
        await gw.policy.put_list("default", "inv", WordList("review", ["double your money"]), ADMIN)
        prepare = gw.messages.prepare
        with pytest.raises(Blocked) as err:
            prepare(send_request("please send your PIN"), "default", 1000)
        assert err.value.details["hits"][0] | {} == {"term": "send your pin", "category": "fraud", "action": "block",
                                                    "start": 7, "end": 20, "matched": "send your PIN"}
        masked = prepare(send_request("hi idiot"), "default", 1000)
        assert masked.verdict.text == "hi *****" and masked.queued is not None and masked.flag is None
        flagged = prepare(send_request("free stuff"), "default", 1000)
        endpoints, data = flagged.flag
        assert len(endpoints) == 1 and data["hits"][0]["term"] == "free" and data["message_id"] == flagged.id
        held = prepare(send_request("double your money"), "default", 1000)
        assert held.held is not None and held.item is None and held.queued is None
        clean = prepare(send_request("hello"), "default", 1000)
        assert clean.verdict is None and clean.record is None
    await running(make_gateway(tmp_path, files={"spam.toml": SPAM_FILE}), body)


async def held_message(gw, text="double your money") -> str:
    await gw.policy.put_list("default", "inv", WordList("review", ["double your money"]), ADMIN)
    p = gw.messages.prepare(send_request(text), "default", gw.clock_ms())
    op, arg = gw.messages._accept_op([p], ops.AcceptArg([], None, None), [])
    assert op is P.accept_with_policy and arg.held == [p.held]
    assert await gw.writer.write(op, arg) is None
    return p.id


async def test_held_message_is_stored_without_a_pending_record(tmp_path):
    async def body(gw):
        msg_id = await held_message(gw)
        assert gw.store.message(msg_id).status == "held"
        assert gw.store.get("pending", msg_id.encode()) is None
        assert gw.store.get("reviews", msg_id.encode()) is not None
        assert gw.delivery.rebuild() == 0  # a restart does not schedule it
    await running(make_gateway(tmp_path), body)


async def test_approve_moves_a_held_message_to_pending(tmp_path):
    async def body(gw):
        msg_id = await held_message(gw)
        audit = gw.policy.audit_entry(ADMIN, "default", "review.approve", msg_id, {}, 5)
        review = await gw.writer.write(P.approve_review, (msg_id, 5, audit))
        assert review.recipient == TO
        assert gw.store.get("reviews", msg_id.encode()) is None
        pending = R.pending_decoder.decode(gw.store.get("pending", msg_id.encode()))
        assert pending.payload == review.payload
        assert [s for s, _ in gw.store.message(msg_id).events] == ["held", "accepted"]
        assert await gw.writer.write(P.approve_review, (msg_id, 6, audit)) is None  # decided once
    await running(make_gateway(tmp_path), body)


async def test_reject_fails_a_held_message_with_the_reason_and_a_status_webhook(tmp_path):
    async def body(gw):
        msg_id = await held_message(gw)
        audit = gw.policy.audit_entry(ADMIN, "default", "review.reject", msg_id, {}, 5)
        arg = P.RejectArg(msg_id, 5, "misleading", gw.webhook_targets(), gw.event_ids, audit)
        review, changes = await gw.writer.write(P.reject_review, arg)
        assert [c.status for c in changes] == ["failed"]
        rec = gw.store.message(msg_id)
        assert rec.status == "failed" and rec.reason == "misleading"
        events = [msgspec.json.decode(v) for _, v in gw.store.scan("webhook_outbox")]
        assert [(e["type"], e["data"]["status"], e["data"]["reason"]) for e in events] == \
            [("message.status", "failed", "misleading")]
        assert gw.store.get("pending", msg_id.encode()) is None
    await running(make_gateway(tmp_path), body)


async def test_opted_out_contact_refuses_marketing_but_not_urgent_messages(tmp_path):
    async def body(gw):
        assert not gw.policy.screening("default")  # no lists, no opt-outs: nothing to do per message
        await gw.policy.set_opt_out("default", "+15550000001", TO, True, source="admin", detail="k1",
                                    actor="k1", role="admin")
        for priority in ("normal", "bulk"):
            with pytest.raises(ApiError) as err:
                gw.messages.prepare(send_request("hi", priority=priority), "default", 1)
            assert err.value.code == "recipient_opted_out"
        assert gw.messages.prepare(send_request("hi", priority="urgent"), "default", 1).queued is not None
        assert gw.messages.prepare(send_request("hi", to="+14155550101"), "default", 1).queued is not None
        await gw.policy.set_opt_out("default", "+15550000001", TO, False, source="admin", detail="k1",
                                    actor="k1", role="admin")
        assert gw.messages.prepare(send_request("hi"), "default", 1).queued is not None
    await running(make_gateway(tmp_path), body)


async def test_urgent_messages_are_refused_too_when_the_config_says_so(tmp_path):
    async def body(gw):
        await gw.policy.set_opt_out("default", "+15550000001", TO, True, source="admin", detail="k1",
                                    actor="k1", role="admin")
        with pytest.raises(ApiError, match="opted out"):
            gw.messages.prepare(send_request("hi", priority="urgent"), "default", 1)
    await running(make_gateway(tmp_path, policy="[policy.opt_out]\nurgent_allowed = false"), body)


async def test_inbound_stop_opts_out_and_start_opts_back_in(tmp_path):
    async def body(gw):
        on_inbound = gw.policy.on_inbound_text
        reply = await on_inbound("default", "+15550000001", TO, "Stop!")
        assert reply.startswith("You are unsubscribed")
        assert gw.policy.opted_out("default", "+15550000001", TO)
        assert not gw.policy.opted_out("default", "+15550000002", TO)  # per sender
        assert not gw.policy.opted_out("other", "+15550000001", TO)  # per workspace
        assert (await on_inbound("default", "+15550000001", TO, "BAJA")).startswith("Te has dado de baja")
        assert await on_inbound("default", "+15550000001", TO, "where is my order?") is None
        assert gw.policy.opted_out("default", "+15550000001", TO)
        assert (await on_inbound("default", "+15550000001", TO, "start")).startswith("You are subscribed")
        assert not gw.policy.opted_out("default", "+15550000001", TO)
        records = [P.audit_decoder.decode(raw) for _, raw in gw.store.scan("audit")]
        assert [(r.action, r.actor) for r in records] == [("opt_out.set", f"contact:{TO}")] * 2 + \
            [("opt_out.clear", f"contact:{TO}")]
    await running(make_gateway(tmp_path), body)


@pytest.mark.parametrize("change", ["replace", "delete", "reload"])
async def test_rules_a_change_replaces_are_freed_by_the_releaser_off_the_loop_thread(tmp_path, monkeypatch, change):
    monkeypatch.setattr(scanner_module, "SHARD_KEYS", 8)
    freeing = Freeing(monkeypatch)

    async def body(gw):
        loop_thread = threading.get_ident()
        if change == "reload":
            old = freeing.watch(gw.policy.engine.rules("default").scanner)
            (tmp_path / "words" / "spam.toml").write_text('action = "flag"\nterms = ["win"]\n')
            await gw.reload()
            await gw.policy.settled()
        else:
            await gw.policy.put_list("default", "spam", WordList("block", [f"word{i:03d}x" for i in range(40)]), ADMIN)
            old = freeing.watch(gw.policy.engine.rules("default").scanner)
            await gw.policy.put_list("default", "spam", WordList("flag", ["win"]) if change == "replace" else None,
                                     ADMIN)
        await gw.policy.releaser.drained()
        assert old() is None
        assert freeing.freed_in and loop_thread not in freeing.freed_in
        assert freeing.released and all(thread != loop_thread for thread, _ in freeing.released)
    files = {"spam.toml": 'action = "flag"\nterms = [' + ", ".join(f'"term{i:03d}y"' for i in range(40)) + "]\n"}
    await running(make_gateway(tmp_path, files=files), body)


async def test_a_big_build_leaves_no_pile_of_young_objects_and_collection_back_on(tmp_path):
    # A 20,000-term build once left ~28,000 young tuples (freeing its older build data counts the
    # young generation down) for one long pass: ~140,000 and 20-25 ms for 100,000 terms.
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # as `gateway run` does

    async def body(gw):
        for seed in (1, 2, 3):
            await gw.policy.put_list("default", "spam", WordList("block", terms(20_000, seed=seed)), ADMIN)
            assert gw.policy.engine.rules("default").scanner.shards > 1
            assert gc.isenabled()
        assert len(gc.get_objects(0)) < 5_000
    try:
        await running(make_gateway(tmp_path), body)
    finally:
        gc.set_threshold(*thresholds)


def test_builders_turn_automatic_collection_off_until_the_last_one_is_done():
    builders = _BuilderGc()
    assert gc.isenabled()
    with builders:
        assert not gc.isenabled() and builders.collects
        with builders:
            assert not gc.isenabled()
        assert not gc.isenabled() and builders.collects
    assert gc.isenabled() and not builders.collects
    gc.disable()  # someone else switched it off: builders leave it so and do not collect
    try:
        with builders:
            assert not builders.collects
        assert not gc.isenabled()
    finally:
        gc.enable()
